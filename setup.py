"""The packages: botlnek_site and aggregates, and the site's templates.

The top-level templates/ (base layout, error pages, login, admin branding) is the
site's, beside its settings rather than inside one app; the wheel ships it as the
package botlnek_site.templates. pyproject.toml alone cannot add a folder from
outside the packages to the packages it discovers, hence this file; everything
else is in pyproject.toml.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["botlnek_site", "botlnek_site.*", "aggregates*"]),
        "botlnek_site.templates",
    ],
    package_dir={"botlnek_site.templates": "templates"},
)
