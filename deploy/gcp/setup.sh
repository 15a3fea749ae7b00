#!/usr/bin/env bash
# Stand up the production shape of the model release system in one Google Cloud project.
#
# Creates (or keeps, when it already exists) everything deploy/README.md describes: APIs, Artifact Registry,
# the model bucket, Pub/Sub topics with dead-letter topics and subscriptions, Cloud SQL for PostgreSQL on a
# private IP, secrets, the intake Cloud Function (gen2) with its Eventarc trigger on object-finalized events,
# a GKE Autopilot cluster (GPUs on demand, Workload Identity, Managed Prometheus), IAM for every identity,
# the control plane in the cluster, the dashboard and the drift alert policy. Running it again converges instead
# of failing.
#
# Usage: PROJECT_ID=my-project deploy/gcp/setup.sh                 (from the repository root, gcloud logged in)
#        PROJECT_ID=my-project deploy/gcp/setup.sh grant-model NAME (onboard a model: its pods' identity)
# Every setting below can be overridden from the environment.
set -euo pipefail

PROJECT_ID="${PROJECT_ID:?set PROJECT_ID to the Google Cloud project to deploy into}"
REGION="${REGION:-us-central1}"
BUCKET="${BUCKET:-${PROJECT_ID}-models}"
CLUSTER="${CLUSTER:-model-release}"
NAMESPACE="${NAMESPACE:-model-release}"
REPOSITORY="${REPOSITORY:-model-release}"
SQL_INSTANCE="${SQL_INSTANCE:-model-release-pg}"
SQL_TIER="${SQL_TIER:-db-custom-1-3840}"
DB_NAME="${DB_NAME:-release}"
DB_USER="${DB_USER:-release}"
NETWORK="${NETWORK:-default}"
CONNECTOR="${CONNECTOR:-release-connector}"
CONNECTOR_RANGE="${CONNECTOR_RANGE:-10.8.0.0/28}"
FUNCTION="${FUNCTION:-release-intake}"
INTAKE_MODULE="${INTAKE_MODULE:-functions.main}"
IMAGE_TAG="${IMAGE_TAG:-$(git rev-parse --short HEAD 2>/dev/null || echo latest)}"
SKIP_BUILD="${SKIP_BUILD:-0}"

TOPICS=(model-events prediction-logs drift-metrics alerts release-ticks)
# subscription:topic pairs, named as the services ensure them (release/bootstrap.py, monitoring/monitor.py).
SUBSCRIPTIONS=(controller:model-events controller-ticks:release-ticks drift-profiles:model-events
               drift-monitor:prediction-logs)
# What each workload identity may do on Pub/Sub, by name: role=publish-topics|consume-subscriptions. A role
# publishes only what it journals (its RELEASE_RELAY_TOPICS in deploy/k8s) and the dead-letter topics of the
# subscriptions it consumes; nobody holds pubsub.editor, so the router cannot publish a rollback request.
GRANTS=(
  "release-control-plane=model-events,model-events-dead-letter,release-ticks,release-ticks-dead-letter|controller,controller-ticks"
  "release-router=prediction-logs|"
  "release-api=model-events,drift-metrics|"
  "release-monitor=drift-metrics,alerts,model-events,model-events-dead-letter,prediction-logs-dead-letter|drift-monitor,drift-profiles"
)
DEAD_LETTER_SUFFIX="-dead-letter"
MAX_DELIVERY_ATTEMPTS="${MAX_DELIVERY_ATTEMPTS:-5}"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
REGISTRY="${REGION}-docker.pkg.dev/${PROJECT_ID}/${REPOSITORY}"
POD_IMAGE="${REGISTRY}/pod:${IMAGE_TAG}"
CONTROL_PLANE_IMAGE="${REGISTRY}/control-plane:${IMAGE_TAG}"
INTAKE_SA="${FUNCTION}@${PROJECT_ID}.iam.gserviceaccount.com"

# Scratch space for generated build configs and staged sources; removed however the script ends.
WORKDIR="$(mktemp -d)"
trap 'rm -rf "$WORKDIR"' EXIT

log() { printf '\n==> %s\n' "$*"; }

# exists CMD... : true when the describe command succeeds (the resource is there), quietly.
exists() { "$@" >/dev/null 2>&1; }

enable_apis() {
  log "Enabling APIs"
  gcloud services enable --project "$PROJECT_ID" \
    artifactregistry.googleapis.com cloudbuild.googleapis.com cloudfunctions.googleapis.com \
    compute.googleapis.com container.googleapis.com eventarc.googleapis.com iam.googleapis.com \
    monitoring.googleapis.com pubsub.googleapis.com run.googleapis.com secretmanager.googleapis.com \
    servicenetworking.googleapis.com sqladmin.googleapis.com storage.googleapis.com \
    vpcaccess.googleapis.com
}

project_number() {
  gcloud projects describe "$PROJECT_ID" --format='value(projectNumber)'
}

# The IAM principal of a Kubernetes service account under Workload Identity Federation for GKE.
ksa_principal() {
  printf 'principal://iam.googleapis.com/projects/%s/locations/global/workloadIdentityPools/%s.svc.id.goog/subject/ns/%s/sa/%s' \
    "$(project_number)" "$PROJECT_ID" "$NAMESPACE" "$1"
}

create_registry() {
  log "Artifact Registry ${REPOSITORY}"
  exists gcloud artifacts repositories describe "$REPOSITORY" --project "$PROJECT_ID" --location "$REGION" ||
    gcloud artifacts repositories create "$REPOSITORY" --project "$PROJECT_ID" --location "$REGION" \
      --repository-format docker --description "Model release images"
}

create_bucket() {
  log "Bucket gs://${BUCKET}"
  exists gcloud storage buckets describe "gs://${BUCKET}" --project "$PROJECT_ID" ||
    gcloud storage buckets create "gs://${BUCKET}" --project "$PROJECT_ID" --location "$REGION" \
      --uniform-bucket-level-access --public-access-prevention
}

create_topic() {
  exists gcloud pubsub topics describe "$1" --project "$PROJECT_ID" ||
    gcloud pubsub topics create "$1" --project "$PROJECT_ID"
}

create_pubsub() {
  log "Pub/Sub topics, dead-letter topics and subscriptions"
  local topic subscription pair pubsub_agent
  pubsub_agent="serviceAccount:service-$(project_number)@gcp-sa-pubsub.iam.gserviceaccount.com"
  for topic in "${TOPICS[@]}"; do
    create_topic "$topic"
    create_topic "${topic}${DEAD_LETTER_SUFFIX}"
    # Dead letters are kept (7 days) in a subscription of their own, where `release dead-letters` finds them.
    exists gcloud pubsub subscriptions describe "${topic}${DEAD_LETTER_SUFFIX}" --project "$PROJECT_ID" ||
      gcloud pubsub subscriptions create "${topic}${DEAD_LETTER_SUFFIX}" --project "$PROJECT_ID" \
        --topic "${topic}${DEAD_LETTER_SUFFIX}" --ack-deadline 600 --message-retention-duration 7d
    # Pub/Sub itself moves undeliverable messages: it must be able to publish to the dead-letter topic.
    gcloud pubsub topics add-iam-policy-binding "${topic}${DEAD_LETTER_SUFFIX}" --project "$PROJECT_ID" \
      --member "$pubsub_agent" --role roles/pubsub.publisher --quiet >/dev/null
  done
  for pair in "${SUBSCRIPTIONS[@]}"; do
    subscription="${pair%%:*}"
    topic="${pair#*:}"
    exists gcloud pubsub subscriptions describe "$subscription" --project "$PROJECT_ID" ||
      gcloud pubsub subscriptions create "$subscription" --project "$PROJECT_ID" --topic "$topic" \
        --ack-deadline 600 --enable-message-ordering \
        --dead-letter-topic "${topic}${DEAD_LETTER_SUFFIX}" --max-delivery-attempts "$MAX_DELIVERY_ATTEMPTS" \
        --min-retry-delay 10s --max-retry-delay 600s
    gcloud pubsub subscriptions add-iam-policy-binding "$subscription" --project "$PROJECT_ID" \
      --member "$pubsub_agent" --role roles/pubsub.subscriber --quiet >/dev/null
  done
}

create_private_network() {
  log "Private services access and Serverless VPC connector on network ${NETWORK}"
  exists gcloud compute addresses describe google-managed-services-range --global --project "$PROJECT_ID" ||
    gcloud compute addresses create google-managed-services-range --global --project "$PROJECT_ID" \
      --purpose VPC_PEERING --prefix-length 16 --network "$NETWORK"
  gcloud services vpc-peerings connect --project "$PROJECT_ID" --service servicenetworking.googleapis.com \
    --ranges google-managed-services-range --network "$NETWORK" 2>/dev/null ||
    echo "    (peering already connected)"
  exists gcloud compute networks vpc-access connectors describe "$CONNECTOR" --region "$REGION" \
      --project "$PROJECT_ID" ||
    gcloud compute networks vpc-access connectors create "$CONNECTOR" --region "$REGION" \
      --project "$PROJECT_ID" --network "$NETWORK" --range "$CONNECTOR_RANGE"
}

secret_value() {
  gcloud secrets versions access latest --secret "$1" --project "$PROJECT_ID"
}

put_secret() {
  exists gcloud secrets describe "$1" --project "$PROJECT_ID" ||
    gcloud secrets create "$1" --project "$PROJECT_ID" --replication-policy automatic
  printf '%s' "$2" | gcloud secrets versions add "$1" --project "$PROJECT_ID" --data-file=-
}

create_database() {
  log "Cloud SQL for PostgreSQL ${SQL_INSTANCE} (private IP only)"
  exists gcloud sql instances describe "$SQL_INSTANCE" --project "$PROJECT_ID" ||
    gcloud sql instances create "$SQL_INSTANCE" --project "$PROJECT_ID" --region "$REGION" \
      --database-version POSTGRES_16 --tier "$SQL_TIER" --network "$NETWORK" --no-assign-ip \
      --availability-type regional --backup-start-time 03:00 --enable-point-in-time-recovery
  exists gcloud sql databases describe "$DB_NAME" --instance "$SQL_INSTANCE" --project "$PROJECT_ID" ||
    gcloud sql databases create "$DB_NAME" --instance "$SQL_INSTANCE" --project "$PROJECT_ID"
  # The password is made once and lives in Secret Manager; a rerun keeps it.
  if ! exists gcloud secrets versions access latest --secret release-db-url --project "$PROJECT_ID"; then
    local password address
    password="$(openssl rand -hex 24)"
    address="$(gcloud sql instances describe "$SQL_INSTANCE" --project "$PROJECT_ID" \
      --format='value(ipAddresses[0].ipAddress)')"
    if exists gcloud sql users describe "$DB_USER" --instance "$SQL_INSTANCE" --project "$PROJECT_ID"; then
      gcloud sql users set-password "$DB_USER" --instance "$SQL_INSTANCE" --project "$PROJECT_ID" \
        --password "$password"
    else
      gcloud sql users create "$DB_USER" --instance "$SQL_INSTANCE" --project "$PROJECT_ID" --password "$password"
    fi
    put_secret release-db-url "postgresql://${DB_USER}:${password}@${address}:5432/${DB_NAME}?sslmode=require"
  fi
  if ! exists gcloud secrets versions access latest --secret release-api-token --project "$PROJECT_ID"; then
    put_secret release-api-token "$(openssl rand -hex 32)"
  fi
}

build_images() {
  if [[ "$SKIP_BUILD" == "1" ]]; then
    log "Skipping image builds (SKIP_BUILD=1): using ${POD_IMAGE} and ${CONTROL_PLANE_IMAGE}"
    return
  fi
  log "Building images with Cloud Build"
  local config="$WORKDIR/cloudbuild.yaml"
  cat >"$config" <<EOF
steps:
  - name: gcr.io/cloud-builders/docker
    args: [build, -f, deploy/docker/pod.Dockerfile, -t, "${POD_IMAGE}", .]
  - name: gcr.io/cloud-builders/docker
    args: [build, -f, deploy/docker/control-plane.Dockerfile, -t, "${CONTROL_PLANE_IMAGE}", .]
images: ["${POD_IMAGE}", "${CONTROL_PLANE_IMAGE}"]
timeout: 3600s
EOF
  gcloud builds submit "$REPO_ROOT" --project "$PROJECT_ID" --region "$REGION" --config "$config"
}

deploy_intake_function() {
  log "Intake Cloud Function ${FUNCTION} (gen2) on object-finalized events of gs://${BUCKET}"
  local project_number role stage="$WORKDIR/intake"
  project_number="$(project_number)"
  exists gcloud iam service-accounts describe "$INTAKE_SA" --project "$PROJECT_ID" ||
    gcloud iam service-accounts create "$FUNCTION" --project "$PROJECT_ID" --display-name "Model release intake"
  # Cloud Storage publishes its events through Pub/Sub on Eventarc's behalf.
  gcloud projects add-iam-policy-binding "$PROJECT_ID" --condition None --quiet >/dev/null \
    --member "serviceAccount:service-${project_number}@gs-project-accounts.iam.gserviceaccount.com" \
    --role roles/pubsub.publisher
  for role in roles/eventarc.eventReceiver roles/run.invoker; do
    gcloud projects add-iam-policy-binding "$PROJECT_ID" --condition None --quiet >/dev/null \
      --member "serviceAccount:${INTAKE_SA}" --role "$role"
  done
  # Intake publishes registrations and rejections, on one topic.
  gcloud pubsub topics add-iam-policy-binding model-events --project "$PROJECT_ID" --quiet >/dev/null \
    --member "serviceAccount:${INTAKE_SA}" --role roles/pubsub.publisher
  gcloud storage buckets add-iam-policy-binding "gs://${BUCKET}" --quiet >/dev/null \
    --member "serviceAccount:${INTAKE_SA}" --role roles/storage.objectAdmin
  gcloud secrets add-iam-policy-binding release-db-url --project "$PROJECT_ID" --quiet >/dev/null \
    --member "serviceAccount:${INTAKE_SA}" --role roles/secretmanager.secretAccessor

  # Cloud Functions loads main.py from the source root: stage the packages with a one-line shim.
  rm -rf "$stage" && mkdir -p "$stage"
  cp -R "$REPO_ROOT/functions" "$REPO_ROOT/release" "$REPO_ROOT/schemas" "$REPO_ROOT/monitoring" "$stage/"
  grep -v '^#' "$REPO_ROOT/deploy/docker/control-plane-requirements.txt" >"$stage/requirements.txt"
  printf 'from %s import on_storage_event  # noqa: F401\n' "$INTAKE_MODULE" >"$stage/main.py"

  # Deploying with an event filter creates (or updates) the Eventarc trigger as well.
  gcloud functions deploy "$FUNCTION" --gen2 --project "$PROJECT_ID" --region "$REGION" \
    --runtime python311 --source "$stage" --entry-point on_storage_event \
    --trigger-location "$REGION" \
    --trigger-event-filters "type=google.cloud.storage.object.v1.finalized" \
    --trigger-event-filters "bucket=${BUCKET}" \
    --trigger-service-account "$INTAKE_SA" --service-account "$INTAKE_SA" \
    --retry --vpc-connector "$CONNECTOR" --egress-settings private-ranges-only \
    --memory 1Gi --timeout 540s --max-instances 20 \
    --set-env-vars "RELEASE_BUCKET=gs://${BUCKET},RELEASE_BUS=pubsub,RELEASE_GCP_PROJECT=${PROJECT_ID},RELEASE_LOG_FORMAT=json,RELEASE_HOME=/tmp/release,RELEASE_RELAY_TOPICS=model-events" \
    --set-secrets "RELEASE_DB_URL=release-db-url:latest"
}

create_cluster() {
  log "GKE Autopilot cluster ${CLUSTER} (GPU nodes on demand, Workload Identity, Managed Prometheus)"
  # Autopilot provisions GPU nodes from the pods' accelerator node selector; check the GPU quota of the region.
  exists gcloud container clusters describe "$CLUSTER" --region "$REGION" --project "$PROJECT_ID" ||
    gcloud container clusters create-auto "$CLUSTER" --region "$REGION" --project "$PROJECT_ID" \
      --network "$NETWORK" --release-channel regular
  gcloud container clusters get-credentials "$CLUSTER" --region "$REGION" --project "$PROJECT_ID"
}

grant_workloads() {
  log "IAM for the cluster's service accounts (Workload Identity Federation for GKE)"
  local grant ksa topics subscriptions topic subscription
  for grant in "${GRANTS[@]}"; do
    ksa="${grant%%=*}"
    topics="${grant#*=}"
    subscriptions="${topics#*|}"
    topics="${topics%%|*}"
    for topic in ${topics//,/ }; do
      gcloud pubsub topics add-iam-policy-binding "$topic" --project "$PROJECT_ID" --quiet >/dev/null \
        --member "$(ksa_principal "$ksa")" --role roles/pubsub.publisher
    done
    for subscription in ${subscriptions//,/ }; do
      gcloud pubsub subscriptions add-iam-policy-binding "$subscription" --project "$PROJECT_ID" --quiet >/dev/null \
        --member "$(ksa_principal "$ksa")" --role roles/pubsub.subscriber
    done
  done
  # The controller and the monitor read artifacts (eval sets, reference samples); nobody in the cluster writes
  # to the bucket (intake, a Cloud Function, writes REJECTED.json).
  for ksa in release-control-plane release-monitor; do
    gcloud storage buckets add-iam-policy-binding "gs://${BUCKET}" --quiet >/dev/null \
      --member "$(ksa_principal "$ksa")" --role roles/storage.objectViewer
  done
  for ksa in release-control-plane release-monitor release-api; do
    gcloud projects add-iam-policy-binding "$PROJECT_ID" --condition None --quiet >/dev/null \
      --member "$(ksa_principal "$ksa")" --role roles/monitoring.metricWriter
  done
}

# grant_model NAME: onboard a model. Its serving pods run as the Kubernetes service account model-NAME, which may
# read objects under models/NAME/ and nothing else (an IAM condition on the object name), so model code can
# never read another model's artifacts. Run `deploy/gcp/setup.sh grant-model NAME` once per model.
grant_model() {
  local model="$1" ksa="model-$1"
  [[ "$model" =~ ^[a-z0-9][a-z0-9-]{0,62}$ ]] || { echo "not a model name: ${model}" >&2; return 2; }
  log "Onboarding model ${model}: service account ${ksa}, reader of gs://${BUCKET}/models/${model}/ only"
  gcloud container clusters get-credentials "$CLUSTER" --region "$REGION" --project "$PROJECT_ID"
  kubectl -n "$NAMESPACE" create serviceaccount "$ksa" --dry-run=client -o yaml |
    kubectl label --local -f - app.kubernetes.io/part-of=model-release -o yaml |
    kubectl apply -f -
  kubectl -n "$NAMESPACE" patch serviceaccount "$ksa" -p '{"automountServiceAccountToken": false}'
  gcloud storage buckets add-iam-policy-binding "gs://${BUCKET}" --quiet >/dev/null \
    --member "$(ksa_principal "$ksa")" --role roles/storage.objectViewer \
    --condition "title=model-${model}-only,expression=resource.name.startsWith(\"projects/_/buckets/${BUCKET}/objects/models/${model}/\")"
}

deploy_control_plane() {
  log "Control plane in namespace ${NAMESPACE}"
  kubectl apply -f "$REPO_ROOT/deploy/k8s/namespace.yaml"
  kubectl -n "$NAMESPACE" create configmap release-settings --dry-run=client -o yaml \
    --from-literal "RELEASE_BUCKET=gs://${BUCKET}" \
    --from-literal RELEASE_BUS=pubsub \
    --from-literal "RELEASE_GCP_PROJECT=${PROJECT_ID}" \
    --from-literal RELEASE_SERVING=kubernetes \
    --from-literal "RELEASE_K8S_NAMESPACE=${NAMESPACE}" \
    --from-literal "RELEASE_K8S_IMAGE=${POD_IMAGE}" | kubectl apply -f -
  kubectl -n "$NAMESPACE" create secret generic release-secrets --dry-run=client -o yaml \
    --from-literal "db-url=$(secret_value release-db-url)" \
    --from-literal "api-token=$(secret_value release-api-token)" | kubectl apply -f -
  local overlay="$WORKDIR/overlay"
  mkdir -p "$overlay"
  cat >"$overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ${REPO_ROOT}/deploy/k8s
images:
  - name: control-plane
    newName: ${REGISTRY}/control-plane
    newTag: "${IMAGE_TAG}"
EOF
  kubectl apply -k "$overlay"
}

create_dashboard() {
  log "Cloud Monitoring dashboard"
  local existing
  existing="$(gcloud monitoring dashboards list --project "$PROJECT_ID" \
    --filter "displayName='Model release'" --format 'value(name)')"
  if [[ -z "$existing" ]]; then
    gcloud monitoring dashboards create --project "$PROJECT_ID" \
      --config-from-file "$REPO_ROOT/deploy/dashboards/model-release.json"
  else
    echo "    (kept: ${existing})"
  fi
}

create_alert_policy() {
  log "Cloud Monitoring alert policy on drift"
  local existing channels=()
  existing="$(gcloud alpha monitoring policies list --project "$PROJECT_ID" \
    --filter "displayName='Model release: drift'" --format 'value(name)')"
  # ALERT_CHANNELS: comma-separated notification channel ids (Slack, email, PagerDuty) to page; none by default.
  if [[ -n "${ALERT_CHANNELS:-}" ]]; then
    channels=(--notification-channels "$ALERT_CHANNELS")
  fi
  if [[ -z "$existing" ]]; then
    gcloud alpha monitoring policies create --project "$PROJECT_ID" \
      --policy-from-file "$REPO_ROOT/deploy/alerting/drift-alert-policy.json" "${channels[@]}"
  else
    echo "    (kept: ${existing})"
  fi
}

main() {
  gcloud config set project "$PROJECT_ID" >/dev/null
  if [[ "${1:-}" == "grant-model" ]]; then
    grant_model "${2:?usage: deploy/gcp/setup.sh grant-model NAME}"
    return
  fi
  enable_apis
  create_registry
  create_bucket
  create_pubsub
  create_private_network
  create_database
  build_images
  deploy_intake_function
  create_cluster
  grant_workloads
  deploy_control_plane
  create_dashboard
  create_alert_policy
  log "Done. Onboard a model with: deploy/gcp/setup.sh grant-model NAME"
  log "then upload it: gcloud storage cp -r MODEL_DIR gs://${BUCKET}/models/NAME/VERSION/"
}

main "$@"
