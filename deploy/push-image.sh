#!/usr/bin/env bash
# Builds the image from the repository's Dockerfile (the real multi-stage
# build), tags it IMAGE_REPOSITORY_URI:VERSION and pushes it, with docker or
# podman. Checks the registry login before the (several minutes long) build.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'EOF'
usage: deploy/push-image.sh VERSION

Builds the image, tags it $IMAGE_REPOSITORY_URI:VERSION and pushes it. Then
roll the service with IMAGE_TAG=VERSION deploy/stack-up.sh service.

Environment:
  IMAGE_REPOSITORY_URI  required: the ECR repository, output RepositoryUri of
                        the ecr stack, e.g.
                        123456789012.dkr.ecr.eu-west-1.amazonaws.com/rtmp-proxy
  CONTAINER_ENGINE      docker or podman (default: docker if installed, else podman)
  RUST_IMAGE, RUNTIME_IMAGE
                        base images, passed as build arguments when set (a
                        mirror, or the official images pinned by digest)

Log in first (the token lasts 12 hours):
  aws ecr get-login-password --region REGION |
    docker login --username AWS --password-stdin ACCOUNT.dkr.ecr.REGION.amazonaws.com

The repository's tags are immutable: a VERSION is pushed once.
EOF
}

die() {
  echo "push-image.sh: $*" >&2
  exit 2
}

[ $# -eq 1 ] || { usage >&2; exit 2; }
case "$1" in -h | --help) usage; exit 0 ;; esac
version=$1
[[ "$version" =~ ^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$ ]] ||
  die "invalid tag '$version': letters, digits, '_', '.', '-', at most 128, not starting with '.' or '-'"
[ "$version" != latest ] || die "push a version, not 'latest': the task definition names the exact tag it runs"

repo="${IMAGE_REPOSITORY_URI:-}"
[ -n "$repo" ] || die "IMAGE_REPOSITORY_URI is not set (the ecr stack's RepositoryUri output; see --help)"
name=${repo#*/}
[[ "$repo" == */* && "$name" != *:* && "$name" != *@* ]] ||
  die "IMAGE_REPOSITORY_URI=$repo: expected REGISTRY/NAME without a tag"
registry=${repo%%/*}

engine="${CONTAINER_ENGINE:-}"
if [ -z "$engine" ]; then
  if command -v docker >/dev/null; then engine=docker; elif command -v podman >/dev/null; then engine=podman; fi
fi
case "$engine" in
  docker | podman) command -v "$engine" >/dev/null || die "$engine is not installed" ;;
  "") die "neither docker nor podman is installed" ;;
  *) die "CONTAINER_ENGINE=$engine: use docker or podman" ;;
esac

not_logged_in() {
  die "not logged in to $registry with $engine; run:
  aws ecr get-login-password --region REGION | $engine login --username AWS --password-stdin $registry"
}

# Is there a credential for $registry? podman answers directly; docker keeps
# it in config.json (auths or a per-registry credHelper) or in its global
# credential store, which lists the servers it holds.
if [ "$engine" = podman ]; then
  podman login --get-login "$registry" >/dev/null 2>&1 || not_logged_in
else
  config="${DOCKER_CONFIG:-$HOME/.docker}/config.json"
  [ -r "$config" ] || not_logged_in
  if ! grep -q "\"$registry\"" "$config" && ! grep -q "\"https://$registry\"" "$config"; then
    store=$(sed -n 's/.*"credsStore" *: *"\([^"]*\)".*/\1/p' "$config")
    if [ -z "$store" ] || ! command -v "docker-credential-$store" >/dev/null; then
      not_logged_in
    fi
    "docker-credential-$store" list 2>/dev/null | grep -q "$registry" || not_logged_in
  fi
fi

if [ -n "$(git status --porcelain 2>/dev/null)" ]; then
  echo "push-image.sh: warning: the work tree has uncommitted changes; $version will contain them" >&2
fi
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
image="$repo:$version"

build_args=()
for arg in RUST_IMAGE RUNTIME_IMAGE; do
  [ -z "${!arg:-}" ] || build_args+=(--build-arg "$arg=${!arg}")
done

# linux/amd64: the task definition runs X86_64 (builds on ARM machines too).
"$engine" build --platform linux/amd64 "${build_args[@]}" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$revision" \
  -t "$image" .
"$engine" push "$image"
echo "pushed $image"
echo "next: IMAGE_TAG=$version deploy/stack-up.sh service"
