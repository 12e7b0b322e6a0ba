#!/usr/bin/env bash
# What tests/test_remote.py needs on a fresh machine: an OpenSSH server binary (the tests start
# their own on 127.0.0.1 with their own keys and config; no system service is started), the ssh
# client tools and rsync. Idempotent; where it cannot install, it says so and the tests skip.
set -u
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null && command -v ssh-keygen >/dev/null && command -v scp >/dev/null || need+=(openssh-client)
command -v rsync >/dev/null || need+=(rsync)
if [ ${#need[@]} -gt 0 ]; then
  echo "ci_sshd: installing ${need[*]}"
  # Keep apt from starting the system sshd on port 22: the tests run their own.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } >/tmp/ci_sshd.log 2>&1; then
    echo "ci_sshd: could not install ${need[*]} (see /tmp/ci_sshd.log); the remote tests will skip"
  fi
  [ -n "$policy" ] && rm -f /usr/sbin/policy-rc.d
fi
# sshd's privilege-separation directory (normally made by the service unit).
mkdir -p /run/sshd 2>/dev/null || echo "ci_sshd: cannot create /run/sshd; the remote tests will skip"
exit 0
