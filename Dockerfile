# FinOps Review: one image for web (gunicorn), Celery worker and Celery beat.
# Configured only through environment variables at run time (see docker-compose.yml).

# Front-end libraries (Plotly, HTMX) from npm, exactly as pinned in package-lock.json.
FROM node:20-slim AS assets
WORKDIR /assets
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 finops \
    && useradd --system --uid 10001 --gid finops --home-dir /app --shell /usr/sbin/nologin finops

WORKDIR /app

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# .dockerignore keeps any local node_modules out of the context; this is the clean install.
COPY --from=assets /assets/node_modules ./node_modules

# Static files, node_modules' vendor/ files included, are collected into the image (hashed
# names, gzip variants, served by WhiteNoise).
# Production settings refuse to load without a strong key, so the build uses a throwaway one
# that lives only in this step; the real SECRET_KEY is given at run time.
RUN FINOPS_ENV=production \
    SECRET_KEY="build-only-collectstatic-key-not-used-at-run-time-0123456789abcdef" \
    ALLOWED_HOSTS=build \
    DATABASE_URL=sqlite:////tmp/build.sqlite3 \
    python manage.py collectstatic --noinput \
    && mkdir -p /app/media \
    && chown finops:finops /app/media

USER finops

EXPOSE 8000

# Workers and other gunicorn options: WEB_CONCURRENCY and GUNICORN_CMD_ARGS.
CMD ["gunicorn", "finops.wsgi", "--bind", "0.0.0.0:8000", "--worker-tmp-dir", "/dev/shm", \
     "--access-logfile", "-", "--error-logfile", "-"]
