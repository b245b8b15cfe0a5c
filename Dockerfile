# syntax=docker/dockerfile:1
# Stage 1: build the wheel (Cython extensions compiled here, never at run time).
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY isekai ./isekai
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Stage 2: slim runtime, non-root.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/isekai --create-home isekai
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER isekai
WORKDIR /var/lib/isekai
EXPOSE 8080
ENTRYPOINT ["isekai", "run"]
