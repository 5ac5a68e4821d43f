"""Django "hello" in one file: settings, a URL and a view."""

import django
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpResponse
from django.urls import path

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="bench-only",
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    DATABASES={},
    USE_TZ=True,
)
django.setup()


def hello(request):  # type: ignore[no-untyped-def]
    return HttpResponse("Hello, World!", content_type="text/plain")


urlpatterns = [path("", hello)]
app = get_wsgi_application()
