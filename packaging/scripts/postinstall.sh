#!/bin/sh
# The config readable by the service's group; the unit known to systemd,
# not enabled or started: the config must be edited first.
set -e
chgrp smtpbridge /etc/smtpbridge /etc/smtpbridge/smtpbridge.yaml 2>/dev/null || true
chmod 0750 /etc/smtpbridge
# The state directory (spool, audit log), as the unit's StateDirectory=
# makes it, so that check-config finds it before the first start.
install -d -o smtpbridge -g smtpbridge -m 0700 /var/lib/smtpbridge
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
cat <<'MSG'
smtpbridge is installed, not started. Next:
  1. edit /etc/smtpbridge/smtpbridge.yaml (tenant, devices, listener
     certificate) and /etc/smtpbridge/secrets.env (the client secret);
  2. sudo smtpbridge check-config, then sudo smtpbridge doctor (they
     read the config above and secrets.env, as the service does);
  3. systemctl enable --now smtpbridge
Try it first without a tenant, as any user: smtpbridge serve --config
/usr/share/doc/smtpbridge/examples/sandbox.yaml (its spool and mail go
to ~/.local/state/smtpbridge-sandbox)
MSG
