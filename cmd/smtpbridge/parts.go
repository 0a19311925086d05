package main

import (
	"crypto/x509"

	"github.com/smtpbridge/smtpbridge/bridge"
	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/guard"
	"github.com/smtpbridge/smtpbridge/metrics"
	"github.com/smtpbridge/smtpbridge/queue"
	"github.com/smtpbridge/smtpbridge/status"
	"github.com/smtpbridge/smtpbridge/tokenstore"
)

// What each part of the bridge takes from a config, at start and on each
// reload.

func tokenTenants(cfg *config.Config, roots *x509.CertPool) []tokenstore.Tenant {
	out := make([]tokenstore.Tenant, 0, len(cfg.Tenants))
	for i := range cfg.Tenants {
		out = append(out, tokenstore.TenantOf(&cfg.Tenants[i], roots))
	}
	return out
}

func routes(cfg *config.Config, roots *x509.CertPool) map[string]bridge.Route {
	out := map[string]bridge.Route{}
	for _, t := range cfg.Tenants {
		out[t.Name] = bridge.Route{SMTPHost: t.SMTPHost, RootCAs: roots,
			MaxConnections: t.MaxConnectionsPerMailbox, MaxPerMinute: t.MaxMessagesPerMinute}
	}
	return out
}

// queueOptions are the queue's reloadable settings.
func queueOptions(cfg *config.Config) queue.Options {
	concurrency := map[string]int{}
	for _, t := range cfg.Tenants {
		concurrency[t.Name] = t.MaxConnectionsPerMailbox
	}
	return queue.Options{
		RetryInitial: cfg.Delivery.RetryInitial, RetryMax: cfg.Delivery.RetryMax, MaxAge: cfg.Delivery.MaxAge,
		Concurrency: concurrency, BounceTo: bounceTo(cfg),
	}
}

// bounceTo resolves a device's bounce address, its own or the global one.
func bounceTo(cfg *config.Config) func(string) string {
	byName := map[string]string{}
	for i := range cfg.Devices {
		_, b := cfg.DeliveryFor(&cfg.Devices[i])
		byName[cfg.Devices[i].Name] = b
	}
	global := cfg.Delivery.BounceTo
	return func(device string) string {
		if b, ok := byName[device]; ok {
			return b
		}
		return global // a device since removed from the config
	}
}

func guardSettings(cfg *config.Config) guard.Settings {
	sec := cfg.Security
	return guard.Settings{MaxFailures: sec.AuthMaxFailures, Window: sec.AuthWindow, Block: sec.AuthBlock, Exempt: sec.ExemptNetworks,
		MaxConnections: cfg.Limits.MaxConnections, MaxConnectionsPerIP: cfg.Limits.MaxConnectionsPerIP}
}

func serverSettings(cfg *config.Config, dir *bridge.Directory) bridge.Settings {
	return bridge.Settings{Listeners: cfg.Listeners, Limits: cfg.Limits, Directory: dir,
		Mode: cfg.Delivery.Mode, SyncTimeout: cfg.Delivery.SyncTimeout}
}

func metricsInventory(cfg *config.Config) metrics.Inventory {
	var inv metrics.Inventory
	for _, l := range cfg.Listeners {
		inv.Listeners = append(inv.Listeners, l.Name)
	}
	for i := range cfg.Tenants {
		t := &cfg.Tenants[i]
		inv.Tenants = append(inv.Tenants, metrics.Tenant{Name: t.Name, CredentialExpiry: t.CredentialExpiry()})
	}
	for _, d := range cfg.Devices {
		inv.Devices = append(inv.Devices, metrics.Device{Name: d.Name, Tenant: d.Tenant, ExpectEvery: d.ExpectEvery})
	}
	return inv
}

func statusInventory(cfg *config.Config) status.Inventory {
	var inv status.Inventory
	for i := range cfg.Devices {
		d := &cfg.Devices[i]
		mode, _ := cfg.DeliveryFor(d)
		inv.Devices = append(inv.Devices, status.Device{Name: d.Name, Tenant: d.Tenant, Mailbox: d.Mailbox,
			Mode: mode, ExpectEvery: d.ExpectEvery})
	}
	for i := range cfg.Tenants {
		t := &cfg.Tenants[i]
		cred := "client secret"
		if t.Credential.IsCertificate() {
			cred = "certificate"
		}
		inv.Tenants = append(inv.Tenants, status.Tenant{Name: t.Name, TenantID: t.TenantID, ClientID: t.ClientID,
			Credential: cred, CredentialExpiry: t.CredentialExpiry(), SMTPHost: t.SMTPHost})
	}
	return inv
}
