#!/bin/sh
# The config (kept unless purged) and the spool in /var/lib/smtpbridge
# stay: queued mail is not thrown away with the package. A purge also
# takes the status page's password the package made; a listener
# certificate made with tls-cert stays, as does its directory then.
set -e
if [ "$1" = purge ]; then
	rm -f /etc/smtpbridge/metrics.password
	rmdir /etc/smtpbridge/tls /etc/smtpbridge 2>/dev/null || true
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
