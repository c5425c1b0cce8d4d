#!/usr/bin/env bash
# Build a local Debian bookworm + Python 3.11 base image for machines that cannot pull from Docker Hub:
# debootstrap a minimal root filesystem (about 1 minute) and import it into Podman.
#   containers/base/make-local-base.sh [IMAGE]      (default localhost/cifarflow-base:bookworm)
# Then build with --build-arg BASE_IMAGE=<IMAGE>. Does nothing when the image already exists.
set -euo pipefail
image="${1:-localhost/cifarflow-base:bookworm}"
if podman image exists "$image"; then
    echo "$image exists"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install -y debootstrap" >&2; exit 1; }
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$root" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
rm -f "$root.log"
# debootstrap's python3 is /usr/bin/python3; the Dockerfiles expect `python` like the python images.
ln -sf python3 "$root/usr/bin/python"
tar -C "$root" -c . | podman import --quiet --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "built $image"
