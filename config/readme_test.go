package config

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/passwd"
)

// readmeSections maps the README's configuration tables, by their
// heading, to the YAML path their keys are under; an item of a list is
// its first ([0]).
var readmeSections = map[string]string{
	"`listeners` (at least one)": "listeners[0].",
	"`tenants` (at least one)":   "tenants[0].",
	"`devices` (at least one)":   "devices[0].",
	"`limits`":                   "limits.",
	"`security`":                 "security.",
	"`delivery`":                 "delivery.",
	"`spool`, `log`, `http`, `metrics`, `sandbox`": "",
	"`cluster`":     "cluster.",
	"`token_cache`": "token_cache.",
	"`network`":     "network.",
}

// derived are the defaults the README states in words, as what they are
// made of, with the check that the code agrees.
var derived = map[string]func(c *Config) bool{
	"tenants[0].graph_token_scope": func(c *Config) bool {
		return c.Tenants[0].GraphTokenScope == "" && c.Tenants[0].GraphScope() == c.Tenants[0].GraphHost+"/.default"
	},
	"devices[0].delivery.mode":      func(c *Config) bool { return c.Devices[0].Parsed.Mode == c.Delivery.Mode },
	"devices[0].delivery.bounce_to": func(c *Config) bool { return c.Devices[0].Parsed.BounceTo == c.Delivery.BounceTo },
	"devices[0].max_queued_bytes": func(c *Config) bool {
		return c.Devices[0].Parsed.MaxQueuedBytes == c.Limits.MaxQueuedBytesPerDevice
	},
	"devices[0].transport": func(c *Config) bool { return c.Devices[0].Parsed.Transport == c.Tenants[0].Transport },
	"devices[0].sent_items.keep": func(c *Config) bool {
		return c.Devices[0].SentItems == nil && c.Devices[0].Parsed.SentItemsKeep == time.Duration(c.Tenants[0].SentItems.Keep)
	},
	"cluster.instance": func(c *Config) bool {
		h, _ := os.Hostname()
		return c.Cluster.Instance == h
	},
	"token_cache.dir":    func(c *Config) bool { return c.TokenCache.Dir == filepath.Join(c.Spool.Dir, "tokens") },
	"metrics.per_device": func(c *Config) bool { return c.Metrics.PerDevice == nil && c.Metrics.PerDeviceOn() },
}

// setByTest are the keys minimalConfig sets, whose defaults it cannot
// see.
var setByTest = map[string]bool{
	"listeners[0].allow_insecure_auth": true, "tenants[0].client_secret": true,
	"cluster.redis.address": true, "token_cache.key_env": true,
}

// TestREADMEDefaults holds the README's configuration tables to the code:
// every key's default there is what a config that leaves the key out
// gets. A default changed in the code and not in the README, or the
// other way round, fails here.
func TestREADMEDefaults(t *testing.T) {
	c := minimalConfig(t)
	rows := readmeRows(t)
	if len(rows) < 80 {
		t.Fatalf("read %d rows from the README's configuration tables; the parser is lost", len(rows))
	}
	checked := 0
	for _, r := range rows {
		if setByTest[r.key] {
			continue
		}
		v, err := lookupKey(reflect.ValueOf(c).Elem(), r.key)
		if err != nil {
			t.Errorf("README documents %s, which the config does not have: %v", r.key, err)
			continue
		}
		switch def := r.def; {
		case strings.HasPrefix(def, "required"):
			continue
		case def == "" || strings.HasPrefix(def, "unset"):
			if !v.IsZero() && !(v.Kind() == reflect.Slice && v.Len() == 0) {
				t.Errorf("%s: the README says no default, the code sets %v", r.key, v.Interface())
			}
		case derived[r.key] != nil:
			if !derived[r.key](c) {
				t.Errorf("%s: the README's default %q is not what the code does", r.key, def)
			}
		default:
			lit, ok := literal(def)
			if !ok {
				t.Errorf("%s: the README's default %q is neither a value in backquotes nor known to this test: add it to derived", r.key, def)
				continue
			}
			if !sameValue(v, lit, filepath.Dir(c.Path)) {
				t.Errorf("%s: the README says the default is %s, the code sets %v", r.key, lit, v.Interface())
			}
		}
		checked++
	}
	t.Logf("%d defaults checked against the code", checked)
}

// minimalConfig loads a config that sets only what is required (and a
// Redis address and a token cache key, so that their sections get their
// defaults).
func minimalConfig(t *testing.T) *Config {
	t.Helper()
	hash, err := passwd.NewBcrypt([]byte("a device password for the defaults test"), 4)
	if err != nil {
		t.Fatal(err)
	}
	yaml := fmt.Sprintf(`listeners: [{name: lan, address: "127.0.0.1:2525", allow_insecure_auth: true}]
tenants: [{name: t, tenant_id: 11111111-aaaa-4000-8000-000000000001, client_id: aaaaaaaa-0000-4000-8000-00000000000a, client_secret: s}]
devices: [{name: d, username: d, password_hash: %q, tenant: t, mailbox: d@contoso.example}]
cluster: {redis: {address: "127.0.0.1:6379"}}
token_cache: {key_env: KEY}
`, hash)
	path := filepath.Join(t.TempDir(), "smtpbridge.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadWithEnv(path, func(k string) (string, bool) {
		return strings.Repeat("ab", 32), k == "KEY"
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type readmeRow struct{ key, def string }

var backquoted = regexp.MustCompile("`([^`]+)`")

// readmeRows are the rows of the README's configuration tables: each key
// in a row's first cell, with the row's default.
func readmeRows(t *testing.T) []readmeRow {
	t.Helper()
	data, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	start := strings.Index(text, "\n## Configuration reference\n")
	if start < 0 {
		t.Fatal("no Configuration reference in the README")
	}
	text = text[start+1:]
	if end := strings.Index(text[3:], "\n## "); end >= 0 {
		text = text[:end+3]
	}
	var rows []readmeRow
	for _, sec := range strings.Split(text, "\n### ")[1:] {
		heading, body, _ := strings.Cut(sec, "\n")
		if !strings.Contains(body, "| key | default | meaning |") {
			continue
		}
		prefix, ok := readmeSections[heading]
		if !ok {
			t.Errorf("README section %q has a configuration table this test does not know: add it to readmeSections", heading)
			continue
		}
		for _, line := range strings.Split(body, "\n") {
			if !strings.HasPrefix(line, "| `") {
				continue
			}
			cells := strings.Split(strings.Trim(line, "|"), "|")
			if len(cells) < 3 {
				t.Errorf("README row %q has no default column", line)
				continue
			}
			def := strings.TrimSpace(cells[1])
			for _, m := range backquoted.FindAllStringSubmatch(cells[0], -1) {
				key := m[1]
				if prefix != "" && !strings.HasPrefix(key, strings.TrimSuffix(prefix, ".")) {
					key = prefix + key
				}
				rows = append(rows, readmeRow{key, def})
			}
		}
	}
	return rows
}

// literal is the value in backquotes a default cell starts with, quotes
// taken off; not one when the cell goes on to say how it is made
// (`graph_host` + `/.default`) or names another key.
func literal(def string) (string, bool) {
	m := backquoted.FindStringSubmatchIndex(def)
	if m == nil || m[0] != 0 {
		return "", false
	}
	rest := strings.TrimSpace(def[m[1]:])
	if strings.HasPrefix(rest, "+") {
		return "", false
	}
	return strings.Trim(def[m[2]:m[3]], `"`), true
}

// lookupKey finds the field a YAML key names, by the fields' yaml tags;
// [0] takes a list's first item, a nil pointer reads as its zero value.
func lookupKey(v reflect.Value, key string) (reflect.Value, error) {
	for _, part := range strings.Split(key, ".") {
		name, index := part, -1
		if i := strings.Index(part, "["); i >= 0 {
			name = part[:i]
			index, _ = strconv.Atoi(strings.Trim(part[i:], "[]"))
		}
		if v.Kind() == reflect.Pointer {
			if v.IsNil() {
				v = reflect.Zero(v.Type().Elem())
			} else {
				v = v.Elem()
			}
		}
		f, ok := fieldByTag(v, name)
		if !ok {
			return reflect.Value{}, fmt.Errorf("no field %q in %s", name, v.Type())
		}
		v = f
		if index >= 0 {
			if v.Len() <= index {
				return reflect.Value{}, fmt.Errorf("%s has no item %d", name, index)
			}
			v = v.Index(index)
		}
	}
	return v, nil
}

func fieldByTag(v reflect.Value, name string) (reflect.Value, bool) {
	t := v.Type()
	for i := range t.NumField() {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if tag == name {
			return v.Field(i), true
		}
		if t.Field(i).Anonymous && tag == "" {
			if f, ok := fieldByTag(v.Field(i), name); ok {
				return f, true
			}
		}
	}
	return reflect.Value{}, false
}

// sameValue compares a field with the README's literal, read as the
// field's type; a relative path is the config directory's.
func sameValue(v reflect.Value, lit, dir string) bool {
	if v.Type() == reflect.TypeFor[time.Duration]() {
		d, err := time.ParseDuration(lit)
		return err == nil && time.Duration(v.Int()) == d
	}
	switch v.Kind() {
	case reflect.Bool:
		return strconv.FormatBool(v.Bool()) == lit
	case reflect.Int, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(lit, 10, 64)
		return err == nil && v.Int() == n
	case reflect.String:
		s := v.String()
		return s == lit || filepath.IsAbs(s) && !filepath.IsAbs(lit) && s == filepath.Join(dir, lit)
	case reflect.Slice:
		return lit == "[]" && v.Len() == 0
	}
	return false
}
