#!/bin/sh
# Build the kvgate OCI image (EPP and gateway; no vLLM inside) from Debian packages and PyPI
# alone: mmdebstrap makes a Debian root filesystem, buildah adds a venv with kvgate's wheel
# and its PyPI dependencies, and commits it as $IMAGE (default localhost/kvgate:<version>,
# the image `kvgate render` names by default). Runs as root, or rootless where buildah can.
#
#   deploy/image/build.sh                    # -> localhost/kvgate:<version> in podman's store
#   IMAGE=registry.example.com/kvgate:1 deploy/image/build.sh
#   OCI_ARCHIVE=/tmp/kvgate.tar deploy/image/build.sh   # also write an oci-archive
#
# Needs: mmdebstrap, buildah (Debian: apt-get install mmdebstrap buildah podman), python3,
# and network access to a Debian mirror and to PyPI (pip, on this machine). See docs/kubernetes.md.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python=${PYTHON:-python3}
[ -x "$root/.venv/bin/python" ] && python=${PYTHON:-$root/.venv/bin/python}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/pyproject.toml" | head -1)
image=${IMAGE:-localhost/kvgate:$version}
suite=${DEBIAN_SUITE:-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

for tool in mmdebstrap buildah; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "build.sh: $tool not found: apt-get install mmdebstrap buildah podman" >&2
        exit 2
    }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/kvgate-image.XXXXXX")
ctr=""
cleanup() {
    [ -n "$ctr" ] && buildah rm "$ctr" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# Wheels are fetched here, with this machine's pip settings (index, proxy, CA), for the
# image's Python (Debian bookworm: 3.11); the image installs them with --no-index.
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
want=${IMAGE_PYTHON:-3.11}
if [ "$pyver" != "$want" ]; then
    echo "build.sh: $python is Python $pyver; the image's is $want: set PYTHON to a $want" >&2
    exit 2
fi
echo "build.sh: wheels of kvgate $version and its dependencies"
"$python" -m pip wheel --quiet --wheel-dir "$work/wheels" "$root[extproc,k8s]"

echo "build.sh: Debian $suite root filesystem (python3, venv, CA certificates)"
mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-venv,ca-certificates,tini \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    "$suite" "$work/rootfs.tar" "$mirror"

echo "build.sh: kvgate[extproc,k8s] into /opt/kvgate (from the wheels, no network)"
ctr=$(buildah from scratch)
buildah add --quiet "$ctr" "$work/rootfs.tar" / >/dev/null
buildah copy --quiet "$ctr" "$work/wheels" /tmp/wheels >/dev/null
# chroot isolation: no OCI runtime or cgroups needed (machines with hybrid cgroups refuse crun)
buildah run --isolation chroot "$ctr" -- sh -c '
    set -e
    python3 -m venv /opt/kvgate
    /opt/kvgate/bin/pip install --no-cache-dir --quiet --no-index --find-links /tmp/wheels \
        "kvgate[extproc,k8s]"
    rm -rf /tmp/wheels /root/.cache
    /opt/kvgate/bin/kvgate --help >/dev/null
'
buildah config \
    --env PATH=/opt/kvgate/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env PYTHONUNBUFFERED=1 \
    --user 65532:65532 \
    --workingdir /tmp \
    --port 9002 --port 9003 --port 9090 --port 8080 \
    --entrypoint '["/usr/bin/tini", "--", "kvgate"]' \
    --cmd '["--help"]' \
    --label org.opencontainers.image.title=kvgate \
    --label "org.opencontainers.image.version=$version" \
    --label org.opencontainers.image.description="kvgate: cache-aware LLM gateway and llm-d-compatible EPP" \
    "$ctr"
buildah commit --quiet --rm "$ctr" "$image" >/dev/null
ctr=""
if [ -n "${OCI_ARCHIVE:-}" ]; then
    buildah push --quiet "$image" "oci-archive:$OCI_ARCHIVE:$image"
fi
echo "build.sh: built $image"
