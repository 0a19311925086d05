#!/bin/sh
# The config readable by the service's group; the listener certificate's
# directory, whose files take that group (setgid) so the service reads
# the key `smtpbridge tls-cert` writes there; the status page's password,
# made once; the unit known to systemd, not enabled or started: the
# config must be edited first.
set -e
chgrp smtpbridge /etc/smtpbridge /etc/smtpbridge/smtpbridge.yaml 2>/dev/null || true
chmod 0750 /etc/smtpbridge
install -d -o root -g smtpbridge -m 2750 /etc/smtpbridge/tls
# /etc/smtpbridge is root's (0750): nobody else can put a link here.
pw=/etc/smtpbridge/metrics.password
if [ ! -e "$pw" ] && [ ! -L "$pw" ]; then
	(umask 0027 && head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$pw" && echo >> "$pw")
	chgrp smtpbridge "$pw"
fi
# The state directory (spool, audit log), as the unit's StateDirectory=
# makes it, so that check-config finds it before the first start.
install -d -o smtpbridge -g smtpbridge -m 0700 /var/lib/smtpbridge
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
cat <<'MSG'
smtpbridge is installed, not started. Try it first without a tenant, as
any user (its spool and mail go to ~/.local/state/smtpbridge-sandbox):
  smtpbridge serve --config /usr/share/doc/smtpbridge/examples/sandbox.yaml
Then, for your tenant (README, "Debian, Ubuntu, RHEL, Fedora"):
  1. sudo smtpbridge tls-cert --host NAME --out /etc/smtpbridge/tls
  2. sudoedit /etc/smtpbridge/smtpbridge.yaml and /etc/smtpbridge/secrets.env
  3. sudo smtpbridge check-config && sudo smtpbridge doctor
  4. sudo systemctl enable --now smtpbridge
MSG
