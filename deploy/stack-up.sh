#!/usr/bin/env bash
# Creates or updates one of the two CloudFormation stacks with
# `aws cloudformation deploy`. Parameters come from environment variables
# (keep them in a file and `set -a; . ./prod.env; set +a`).
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat <<'EOF'
usage: deploy/stack-up.sh ecr|service

  ecr      ECR repository (deploy/ecr.yaml), stack "$STACK_PREFIX-ecr"
  service  Fargate service + NLB (deploy/service.yaml), stack "$STACK_PREFIX-service"

Environment (AWS credentials and region: the aws CLI's usual AWS_PROFILE /
AWS_REGION / ...):
  STACK_PREFIX          stack name prefix (default rtmp-proxy)
  DRY_RUN=1             print the aws command instead of running it

  ecr, optional:        REPOSITORY_NAME (rtmp-proxy), KEEP_IMAGES (20)

  service, required:    ECS_CLUSTER           existing ECS cluster name
                        IMAGE_TAG             tag pushed by deploy/push-image.sh
                        VPC_ID, VPC_CIDR      e.g. vpc-0abc..., 10.0.0.0/16
                        TASK_SUBNETS          comma-separated subnet ids of the tasks
                        NLB_SUBNETS           comma-separated subnet ids of the NLB
  service, optional:    IMAGE_REPOSITORY_URI  (default: output RepositoryUri of the ecr stack)
                        CLOUD_MAP_NAMESPACE (media.internal), CLOUD_MAP_SERVICE (media-server),
                        CLOUD_MAP_REGION (task's region), DESIRED_COUNT (2),
                        TASK_CPU (1024), TASK_MEMORY (2048), CLIENT_CIDR (0.0.0.0/0),
                        ASSIGN_PUBLIC_IP (DISABLED), NLB_SCHEME (internet-facing),
                        LOG_LEVEL (info), DEREGISTRATION_DELAY (120),
                        SCALE_IN_PROTECTION (false), MEDIA_CLUSTER (ECS_CLUSTER),
                        REDIS_URL_SECRET_ARN (none: per-task slot counts; the ARN of a
                        Secrets Manager secret holding the redis:// URL),
                        TLS_CERTIFICATE_ARN (none: no RTMPS; an ACM certificate ARN
                        adds the NLB's TLS listener on 443 and PROXY v2),
                        SERVICE_NAME (rtmp-proxy), NOFILE_LIMIT (262144),
                        LOG_RETENTION_DAYS (30)

Optional values left unset keep the stack's current value on an update (the
template's default on creation).
EOF
}

die() {
  echo "stack-up.sh: $*" >&2
  exit 2
}

[ $# -eq 1 ] || { usage >&2; exit 2; }
case "$1" in
  -h | --help) usage; exit 0 ;;
  ecr | service) which=$1 ;;
  *) usage >&2; exit 2 ;;
esac

prefix="${STACK_PREFIX:-rtmp-proxy}"
dry_run="${DRY_RUN:-}"
if [ -z "$dry_run" ]; then
  command -v aws >/dev/null || die "the aws CLI (v2) is not installed"
fi

params=()
missing=()
# required ENV_VAR TemplateParameter
required() {
  if [ -n "${!1:-}" ]; then
    params+=("$2=${!1}")
  else
    missing+=("$1")
  fi
}
# optional ENV_VAR TemplateParameter
optional() {
  if [ -n "${!1:-}" ]; then
    params+=("$2=${!1}")
  fi
}

if [ "$which" = ecr ]; then
  template=ecr.yaml
  optional REPOSITORY_NAME RepositoryName
  optional KEEP_IMAGES KeepImages
else
  template=service.yaml
  required ECS_CLUSTER ClusterName
  required IMAGE_TAG ImageTag
  required VPC_ID VpcId
  required VPC_CIDR VpcCidr
  required TASK_SUBNETS TaskSubnetIds
  required NLB_SUBNETS NlbSubnetIds
  ((${#missing[@]} == 0)) || die "set ${missing[*]} (see deploy/stack-up.sh --help)"
  repo="${IMAGE_REPOSITORY_URI:-}"
  if [ -z "$repo" ]; then
    if [ -n "$dry_run" ]; then
      repo="<RepositoryUri of $prefix-ecr>"
    else
      repo=$(aws cloudformation describe-stacks --stack-name "$prefix-ecr" \
        --query "Stacks[0].Outputs[?OutputKey=='RepositoryUri'].OutputValue" --output text) ||
        die "cannot read RepositoryUri of stack $prefix-ecr: run 'deploy/stack-up.sh ecr' first or set IMAGE_REPOSITORY_URI"
      if [ -z "$repo" ] || [ "$repo" = None ]; then
        die "stack $prefix-ecr has no RepositoryUri output; set IMAGE_REPOSITORY_URI"
      fi
    fi
  fi
  params+=("ImageRepositoryUri=$repo")
  optional CLOUD_MAP_NAMESPACE CloudMapNamespace
  optional CLOUD_MAP_SERVICE CloudMapService
  optional CLOUD_MAP_REGION CloudMapRegion
  optional DESIRED_COUNT DesiredCount
  optional TASK_CPU Cpu
  optional TASK_MEMORY Memory
  optional CLIENT_CIDR ClientCidr
  optional ASSIGN_PUBLIC_IP AssignPublicIp
  optional NLB_SCHEME NlbScheme
  optional LOG_LEVEL LogLevel
  optional LOG_RETENTION_DAYS LogRetentionDays
  optional DEREGISTRATION_DELAY DeregistrationDelay
  optional SCALE_IN_PROTECTION ScaleInProtection
  optional MEDIA_CLUSTER MediaClusterName
  # The URL itself would end up in the task definition, readable by whoever
  # can describe it: the template takes the ARN of a secret holding it.
  [ -z "${REDIS_URL:-}" ] ||
    die "REDIS_URL is no longer passed as is: store the URL in Secrets Manager and set REDIS_URL_SECRET_ARN to the secret's ARN"
  optional REDIS_URL_SECRET_ARN RedisUrlSecretArn
  optional TLS_CERTIFICATE_ARN TlsCertificateArn
  optional SERVICE_NAME ServiceName
  optional NOFILE_LIMIT NofileLimit
fi

# CAPABILITY_IAM: service.yaml creates the task and execution roles (with
# generated names, so several stacks can coexist).
cmd=(aws cloudformation deploy
  --stack-name "$prefix-$which"
  --template-file "$template"
  --capabilities CAPABILITY_IAM
  --no-fail-on-empty-changeset)
# The CLI rejects an empty --parameter-overrides.
((${#params[@]} == 0)) || cmd+=(--parameter-overrides "${params[@]}")

if [ -n "$dry_run" ]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
"${cmd[@]}"

if [ "$which" = service ]; then
  aws cloudformation describe-stacks --stack-name "$prefix-service" \
    --query "Stacks[0].Outputs[?OutputKey=='NlbDnsName'].OutputValue" --output text |
    sed 's|^|publish to: rtmp://|; s|$|:1935/APP/STREAM_KEY|'
fi
