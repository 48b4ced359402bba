#!/usr/bin/env bash
# Installs the system services that the test suite runs for real (Debian/Ubuntu, apt).
# Idempotent: a service whose packages are all installed is skipped. Uses sudo only when not
# root. One function per service; call them from main.
#
#   bash scripts/ci/install_services.sh
set -euo pipefail

SUDO=()
if [[ "$(id -u)" != 0 ]]; then
    SUDO=(sudo)
fi
APT_UPDATED=0

# True when every named Debian package is installed.
packages_installed() {
    local package status
    for package in "$@"; do
        status="$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)"
        [[ "$status" == "install ok installed" ]] || return 1
    done
}

# apt-get install the named packages unless they are all there (apt-get update once per run).
apt_install() {
    if packages_installed "$@"; then
        echo "install_services: already installed: $*"
        return 0
    fi
    if [[ "$APT_UPDATED" == 0 ]]; then
        "${SUDO[@]}" apt-get update
        APT_UPDATED=1
    fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "$@"
}

# Ceph: a one-host cluster with a RADOS Gateway is the real S3 endpoint of the storage tests
# (tests/support/ceph_rgw.py runs it).
install_ceph() {
    apt_install ceph-mon ceph-osd radosgw ceph-common uuid-runtime
}

# Slurm 22.05 with munge: tests/support/slurm_cluster.py runs a throw-away controller and two
# simulated nodes (multiple-slurmd) that the sbatch script's tests submit to.
install_slurm() {
    apt_install slurmd slurmctld slurm-client munge
}

# Evaluation metrics: WordNet 3.0 database files for nltk's lemmatizer (the OK-VQA stemmer;
# scripts/setup_nltk_data.py copies them into .cache/nltk_data), and a Java runtime for
# pycocoevalcap's PTB tokenizer (CIDEr).
install_wordnet() {
    apt_install wordnet-base wordnet-sense-index
}

install_eval_tools() {
    install_wordnet
    apt_install default-jre-headless
}

main() {
    install_ceph
    install_slurm
    install_eval_tools
}

main "$@"
