# The daemon's image: `feature-consumer run`, as a non-root user, on a read-only root filesystem.
#
# Stage 1 installs the package and its pinned dependencies into a virtualenv. Every dependency with
# native code ships a manylinux wheel (confluent-kafka bundles librdkafka, cassandra-driver its libev
# reactor), so no compiler is needed, and none reaches the final image, which only copies the virtualenv.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ONLY_BINARY=cassandra-driver,confluent-kafka,fastavro,numpy,pandas,pyarrow
WORKDIR /src
RUN python -m venv /opt/feature-consumer
COPY pyproject.toml constraints.txt constraints-feast.txt README.md ./
COPY consumer ./consumer
# `parquet` brings pyarrow for `feature-consumer backfill --input *.parquet`. Feast's SDK is only needed
# for `run --feast-repo` (docs/feast.md): build with --build-arg EXTRAS=parquet,feast for that mode.
# Feast needs older pandas and prometheus-client than constraints.txt pins, so with the feast extra the
# pins come from constraints-feast.txt: chosen from EXTRAS itself, there is no second argument to forget.
ARG EXTRAS=parquet
RUN case ",${EXTRAS}," in \
        *,feast,*) constraints="constraints-feast.txt" ;; \
        *) constraints="constraints.txt" ;; \
    esac \
    && /opt/feature-consumer/bin/pip install -c "${constraints}" ".[${EXTRAS}]"

FROM ${PYTHON_IMAGE}
# A fixed numeric uid, so that `runAsNonRoot` can check it without a user database.
RUN groupadd --system --gid 10001 consumer \
    && useradd --system --uid 10001 --gid consumer --no-create-home --shell /usr/sbin/nologin consumer
COPY --from=build /opt/feature-consumer /opt/feature-consumer
# No bytecode written at run time (the root filesystem is read-only), logs unbuffered for `kubectl logs`.
ENV PATH=/opt/feature-consumer/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1
USER 10001:10001
WORKDIR /tmp
EXPOSE 9400
ENTRYPOINT ["feature-consumer"]
# The layout deploy/ mounts: config/config.yaml beside schemas/*.avsc.
CMD ["run", "--config", "/etc/feature-consumer/config/config.yaml"]
