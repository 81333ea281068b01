# Image for the web server, the outbox relay, the Dramatiq worker and one-off management commands.
# The same image runs every process; compose.yaml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=settings.production

WORKDIR /app

# Dependencies first, so that code changes do not invalidate the installed-packages layer.
COPY requirements.txt constraints.txt ./
RUN pip install --no-cache-dir -r requirements.txt -c constraints.txt

COPY . .

# settings.production refuses to import without SECRET_KEY, DATABASE_URL and REDIS_URL: pass
# throwaway values to this one command only (collectstatic connects to neither). They are not ENV,
# so they are not baked into the image; the real ones come at run time.
RUN SECRET_KEY=build-only-collectstatic-key-not-used-at-runtime \
    DATABASE_URL=postgres://build-only@127.0.0.1:5432/unused \
    REDIS_URL=redis://127.0.0.1:6379/0 \
    python manage.py collectstatic --noinput

RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /app app
USER app

EXPOSE 8000

CMD ["gunicorn", "settings.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--access-logfile", "-"]
