#!/bin/sh
# Start one taskmill role. The prometheus multiprocess directory holds the counters of this
# container's processes only: empty it first, so that a restarted container does not add up the
# files of the processes that ran before it.
set -eu
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
  rm -rf "${PROMETHEUS_MULTIPROC_DIR:?}"
  mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
fi
exec taskmill "$@"
