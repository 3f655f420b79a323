#!/bin/sh
# Container entrypoint: applies the environment overrides below to the config
# file, then `exec`s rtmp-proxy, so that the binary replaces this shell as
# PID 1 and receives SIGTERM (drain) and SIGQUIT itself. Never run the binary
# as a child here: the shell would take the signals and the drain never start.
#
#   RTMP_PROXY_CONFIG               config to start from; default the baked-in
#                                   /etc/rtmp-proxy/rtmp-proxy.yaml (mount your
#                                   own file and point this at it)
#   RTMP_PROXY_CLOUD_MAP_NAMESPACE  proxy.backends.cloud_map.namespace
#   RTMP_PROXY_CLOUD_MAP_SERVICE    proxy.backends.cloud_map.service
#   RTMP_PROXY_CLOUD_MAP_REGION     proxy.backends.cloud_map.region (unset: the
#                                   AWS SDK's chain, i.e. AWS_REGION, which ECS
#                                   sets to the task's region)
#   RUST_LOG                        log level; read by rtmp-proxy itself
#
# The binary reads only its YAML file, so an override rewrites the value of
# the line that ends with `# env NAME` into a copy under /run/rtmp-proxy. A
# set variable whose marker line is missing (e.g. in a mounted file) is an
# error rather than being silently ignored. Values are limited to the
# characters of DNS names and region codes, so they cannot change the YAML's
# structure (an HTTP namespace named otherwise needs a mounted config).
# RTMP_PROXY_RENDERED_CONFIG and RTMP_PROXY_BIN move the copy and the binary
# for tests/deploy_config.rs.
set -eu

src="${RTMP_PROXY_CONFIG:-/etc/rtmp-proxy/rtmp-proxy.yaml}"
rendered="${RTMP_PROXY_RENDERED_CONFIG:-/run/rtmp-proxy/rtmp-proxy.yaml}"
bin="${RTMP_PROXY_BIN:-/usr/local/bin/rtmp-proxy}"

die() {
    echo "rtmp-proxy-entrypoint: $*" >&2
    exit 64
}

[ -r "$src" ] || die "cannot read config $src (RTMP_PROXY_CONFIG)"

script=""
for name in RTMP_PROXY_CLOUD_MAP_NAMESPACE RTMP_PROXY_CLOUD_MAP_SERVICE RTMP_PROXY_CLOUD_MAP_REGION; do
    eval "value=\${$name:-}"
    [ -n "$value" ] || continue
    case "$value" in
        *[!A-Za-z0-9._-]*) die "$name=$value: only letters, digits, '.', '_' and '-' are allowed" ;;
    esac
    count=$(grep -c -- "# env $name\$" "$src" || true)
    [ "$count" = 1 ] || die "$name is set but $src has $count lines ending in '# env $name' (need exactly 1)"
    # `key: anything  # env NAME` -> `key: "value"  # env NAME`
    script="$script
s|^\\([[:space:]]*[a-z_]*:\\)[[:space:]].*\\(# env $name\\)\$|\\1 \"$value\"  \\2|"
done

if [ -n "$script" ]; then
    umask 077
    sed -e "$script" "$src" > "$rendered.tmp" || die "cannot write $rendered"
    mv "$rendered.tmp" "$rendered"
    src="$rendered"
fi

exec "$bin" -c "$src" "$@"
