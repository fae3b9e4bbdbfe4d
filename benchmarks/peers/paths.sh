# Sourced by the peer scripts here: where the repository, shared/peers, shared/data and the peers'
# venv/run folders are (each overridable from the environment). Expects HERE = this folder.
REPO=$(cd "$HERE/../.." && pwd)
SHARED_PEERS=${SHARED_PEERS:-$(cd "$REPO/../shared/peers" 2>/dev/null && pwd || echo /work/shared/peers)}
SHARED_DATA=${SHARED_DATA:-$(cd "$REPO/../shared/data" 2>/dev/null && pwd || echo /work/shared/data)}
export PEERS_DIR=${PEERS_DIR:-$HOME/.cache/dynrec-peers}
