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
#   RTMP_PROXY_SCALE_IN_PROTECTION  proxy.scale_in_protection.enabled (true|false)
#   RTMP_PROXY_SCALE_IN_PROTECTION_CLUSTER
#                                   proxy.scale_in_protection.cluster
#   RTMP_PROXY_SLOTS_STORE          proxy.slots.store (local|redis)
#   RTMP_PROXY_SLOTS_REDIS_URL      proxy.slots.url (redis://host:6379/0); on
#                                   ECS from Secrets Manager (task definition
#                                   Secrets), as it may carry a password
#   RTMP_PROXY_ACCEPT_PROXY_MODE    proxy.accept_proxy.mode (off|v1|v2|any)
#   RTMP_PROXY_ACCEPT_PROXY_TRUSTED proxy.accept_proxy.trusted, comma-separated
#                                   CIDRs (10.0.0.0/16,10.1.0.0/16)
#   RUST_LOG                        log level; read by rtmp-proxy itself
#
# The binary reads only its YAML file, so an override rewrites the value of
# the line that ends with `# env NAME` into a copy under /run/rtmp-proxy
# (mode 600: a Redis URL may carry a password). A set variable whose marker
# line is missing (e.g. in a mounted file) is an error rather than being
# silently ignored. Each value is checked for its kind so that it cannot
# change the YAML's structure: names take the characters of DNS names and
# region codes (an HTTP namespace named otherwise needs a mounted config),
# booleans are true or false, URLs have no quotes, backslashes or spaces,
# modes are one of the four, CIDR lists only hex digits, '.', ':', '/' and
# commas (the binary checks each CIDR).
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
for spec in RTMP_PROXY_CLOUD_MAP_NAMESPACE:name RTMP_PROXY_CLOUD_MAP_SERVICE:name \
    RTMP_PROXY_CLOUD_MAP_REGION:name RTMP_PROXY_SCALE_IN_PROTECTION:bool \
    RTMP_PROXY_SCALE_IN_PROTECTION_CLUSTER:name RTMP_PROXY_SLOTS_STORE:name \
    RTMP_PROXY_SLOTS_REDIS_URL:url RTMP_PROXY_ACCEPT_PROXY_MODE:proxy_mode \
    RTMP_PROXY_ACCEPT_PROXY_TRUSTED:cidrs; do
    name=${spec%:*}
    eval "value=\${$name:-}"
    [ -n "$value" ] || continue
    case "${spec#*:}" in
        name)
            case "$value" in
                *[!A-Za-z0-9._-]*) die "$name=$value: only letters, digits, '.', '_' and '-' are allowed" ;;
            esac
            yaml="\"$value\"" ;;
        bool)
            case "$value" in
                true | false) yaml=$value ;;
                *) die "$name=$value: true or false" ;;
            esac ;;
        url)
            # Not echoed: it may carry a password.
            case "$value" in
                *[!A-Za-z0-9._~:/?#@!\$\&\'\(\)*+,\;=%-]*) die "$name: only URL characters are allowed (no quotes, backslashes or spaces)" ;;
            esac
            # `&` means "the match" in sed's replacement.
            yaml="\"$(printf '%s' "$value" | sed 's/&/\\&/g')\"" ;;
        proxy_mode)
            case "$value" in
                off | v1 | v2 | any) yaml="\"$value\"" ;;
                *) die "$name=$value: off, v1, v2 or any" ;;
            esac ;;
        cidrs)
            # A YAML list of quoted strings: "a,b" -> ["a", "b"].
            case "$value" in
                *[!0-9A-Fa-f.:/,]* | ,* | *, | *,,*) die "$name=$value: comma-separated CIDRs such as 10.0.0.0/16,10.1.0.0/16" ;;
            esac
            yaml="[\"$(printf '%s' "$value" | sed 's/,/", "/g')\"]" ;;
    esac
    count=$(grep -c -- "# env $name\$" "$src" || true)
    [ "$count" = 1 ] || die "$name is set but $src has $count lines ending in '# env $name' (need exactly 1)"
    # `key: anything  # env NAME` -> `key: VALUE  # env NAME`
    script="$script
s|^\\([[:space:]]*[a-z_]*:\\)[[:space:]].*\\(# env $name\\)\$|\\1 $yaml  \\2|"
done

if [ -n "$script" ]; then
    umask 077
    sed -e "$script" "$src" > "$rendered.tmp" || die "cannot write $rendered"
    mv "$rendered.tmp" "$rendered"
    src="$rendered"
fi

exec "$bin" -c "$src" "$@"
