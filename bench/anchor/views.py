import json

from django.db import transaction
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from bench.anchor.models import PlainSource


def hello(request):
    return JsonResponse({"hello": "world"})


@csrf_exempt  # an API view: no browser session, no CSRF token
@require_POST
def insert(request):
    body = json.loads(request.body)
    with transaction.atomic():
        source = PlainSource.objects.create(
            domain=body["domain"],
            aggregate=body["aggregate"],
            collection=body["collection"],
            keys=body["keys"],
            attrs=body["attrs"],
        )
    return JsonResponse({"id": source.id, "at": source.at.isoformat()}, status=201)
