"""The site's own templates, a package only so that the wheel ships this folder
inside botlnek_site and the settings find it through the import system (setup.py)."""
