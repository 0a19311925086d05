package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"

	"github.com/smtpbridge/smtpbridge/internal/secret"
)

// Problem is one thing wrong with a config file.
type Problem struct {
	Key     string // e.g. "devices[2].tenant"; "" for the file as a whole
	Line    int    // 0 when unknown
	Message string
	Warning bool // a warning does not stop the bridge
	// File is the included file the key is in (include:); "" for the
	// config file itself.
	File string
}

// In is the problem as a line of a file's report, in the file:line form
// editors jump to: "path:12: key: msg", or "path: key: msg" without a
// line.
func (p Problem) In(path string) string {
	if p.File != "" {
		return p.String()
	}
	s := p.String()
	if p.Line > 0 {
		return path + ":" + strings.TrimPrefix(s, "line ")
	}
	return path + ": " + s
}

func (p Problem) String() string {
	var b strings.Builder
	switch {
	case p.File != "" && p.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", p.File, p.Line)
	case p.File != "":
		b.WriteString(p.File + ": ")
	case p.Line > 0:
		fmt.Fprintf(&b, "line %d: ", p.Line)
	}
	if p.Warning {
		b.WriteString("warning: ")
	}
	if p.Key != "" {
		b.WriteString(p.Key + ": ")
	}
	b.WriteString(p.Message)
	return b.String()
}

// Error is returned by Load when the config has at least one problem that
// is not a warning. It lists every problem found, warnings included.
type Error struct {
	File     string
	Problems []Problem
}

func (e *Error) Error() string {
	var b strings.Builder
	n := 0
	for _, p := range e.Problems {
		if !p.Warning {
			n++
		}
	}
	fmt.Fprintf(&b, "%s: %d problem(s)", e.File, n)
	for _, p := range e.Problems {
		b.WriteString("\n  " + p.String())
	}
	return b.String()
}

// Load reads and checks the config file at path. On any error-level problem
// it returns an *Error listing all of them.
func Load(path string) (*Config, error) {
	return LoadWithEnv(path, os.LookupEnv)
}

// LoadWithEnv is Load with a custom environment lookup, for tests.
func LoadWithEnv(path string, lookup func(string) (string, bool)) (*Config, error) {
	return load(path, lookup, "")
}

// LoadSandbox loads path as smtpbridge serve --sandbox DIR runs it: in
// sandbox mode, with sandbox.dir set to dir whatever the file says.
func LoadSandbox(path, dir string) (*Config, error) {
	return load(path, os.LookupEnv, dir)
}

func load(path string, lookup func(string) (string, bool), sandboxDir string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	l := &loader{file: path, dir: filepath.Dir(path), lookup: lookup, lines: map[string]int{}, files: map[string]string{}, fromEnv: map[string]bool{}}
	cfg := l.parse(data)
	if cfg != nil {
		cfg.Path, cfg.lines = path, l.lines
		if sandboxDir != "" {
			cfg.Sandbox.Dir = sandboxDir
		}
		l.sandboxState(cfg)
		cfg.applyDefaults()
		l.validate(cfg)
		l.checkInlineSecrets(cfg)
	}
	slices.SortStableFunc(l.problems, func(a, b Problem) int { return a.Line - b.Line })
	var errs []Problem
	for _, p := range l.problems {
		if !p.Warning {
			errs = append(errs, p)
		}
	}
	if len(errs) > 0 || cfg == nil {
		return nil, &Error{File: path, Problems: l.problems}
	}
	cfg.Warnings = l.problems
	return cfg, nil
}

// LoadAdmin reads what the command line needs to reach a running bridge
// or its spool (spool.dir, and log.audit_file for trace): problems
// elsewhere in the file, ${VAR}s unset in the admin's shell or secret
// files only the service can read among them, do not stop it.
func LoadAdmin(path string) (*Config, error) { return loadAdmin(path, true) }

// loadAdmin is LoadAdmin; without cut it reads the whole file.
func loadAdmin(path string, cut bool) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	// A ${VAR} unset in the admin's shell is a problem only where the
	// command needs it (http, spool); ${VAR:-default} takes its default.
	lookup := os.LookupEnv
	newLoader := func() *loader {
		return &loader{file: path, dir: filepath.Dir(path), lookup: lookup, lines: map[string]int{}, files: map[string]string{}, fromEnv: map[string]bool{}}
	}
	// The fleet's lists are not read: a config of 10,000 devices would
	// take the command most of its time. If the file without them does
	// not parse (an alias to an anchor in them), it is read whole.
	l := newLoader()
	var cfg *Config
	if part, ok := withoutFleet(data); ok && cut {
		if cfg = l.parse(part); cfg == nil || len(l.problems) > 0 {
			l, cfg = newLoader(), nil
		}
	}
	if cfg == nil {
		cfg = l.parse(data)
	}
	if cfg == nil {
		return nil, &Error{File: path, Problems: l.problems}
	}
	cfg.Path = path
	l.sandboxState(cfg)
	cfg.applyDefaults()
	l.validate(cfg)
	var errs []Problem
	for _, p := range l.problems {
		if !p.Warning && (p.Key == "" || strings.HasPrefix(p.Key, "spool.")) {
			errs = append(errs, p)
		}
	}
	if len(errs) > 0 {
		return nil, &Error{File: path, Problems: errs}
	}
	return cfg, nil
}

// fleetKeys are the top-level keys LoadAdmin does without: the lists
// that grow with the fleet, and include:, which only extends them.
var fleetKeys = map[string]bool{"tenants": true, "devices": true, "include": true, "listeners": true}

// withoutFleet is a block-style config file with the sections of
// fleetKeys blanked (their lines kept as empty lines, so that problems
// in the rest name their lines); ok is false when the file is not a
// plain block mapping at its top level (a flow mapping, several
// documents), which the caller then reads whole.
func withoutFleet(data []byte) ([]byte, bool) {
	out := make([]byte, 0, 4096)
	drop, started := false, false
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i+1], data[i+1:]
		} else {
			data = nil
		}
		text := strings.TrimRight(string(line), "\r\n")
		switch {
		case text == "" || text[0] == ' ' || text[0] == '\t' || text[0] == '#':
			// Inside the section above (or blank, or a comment).
		case text == "---" && !started:
		case text == "---" || text == "..." || text[0] == '{' && !started:
			return nil, false
		default:
			key, _, ok := strings.Cut(text, ":")
			if !ok || !topKeyRE.MatchString(key) {
				if !started {
					return nil, false
				}
				break // a continuation line of the section above
			}
			started, drop = true, fleetKeys[key]
		}
		if drop {
			out = append(out, '\n')
		} else {
			out = append(out, line...)
		}
	}
	return out, started
}

var topKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

type loader struct {
	file string
	dir  string
	// stateDir, if set, is where a sandbox config's relative spool,
	// mail and audit paths go instead of dir (statePath).
	stateDir string
	// files are the keys that come from included files (devices[12]),
	// with the file's path as written in problems.
	files   map[string]string
	lookup  func(string) (string, bool)
	lines   map[string]int  // key path -> line, for messages
	fromEnv map[string]bool // keys whose value came from ${VAR}
	// envNames is the variable a key's value came from, for messages.
	envNames map[string]string
	problems []Problem
}

// checkInlineSecrets warns when the config file itself holds a secret
// (not from ${VAR} or a _file setting) and every user on the host can read
// it.
func (l *loader) checkInlineSecrets(c *Config) {
	exposed, fix := secret.Exposed(l.file)
	if !exposed || c.Sandbox.Dir != "" {
		// A sandbox config's secrets only open the in-process fakes.
		return
	}
	for i, t := range c.Tenants {
		for _, key := range []string{"client_secret", "certificate_password"} {
			k := fmt.Sprintf("tenants[%d].%s", i, key)
			inline := key == "client_secret" && t.ClientSecret != "" || key == "certificate_password" && t.CertificatePassword != "" && t.CertificatePasswordFile == ""
			if inline && !l.fromEnv[k] {
				l.warnf(k, "the config file holds this secret and is readable by every user on this host; %s, or move the secret to an environment variable (\"${VAR}\") or %s_file",
					fix, key)
			}
		}
	}
}

func (l *loader) errorf(key, format string, args ...any) {
	l.problems = append(l.problems, Problem{Key: key, Line: l.line(key), File: l.fileOf(key), Message: fmt.Sprintf(format, args...)})
}

func (l *loader) warnf(key, format string, args ...any) {
	l.problems = append(l.problems, Problem{Key: key, Line: l.line(key), File: l.fileOf(key), Message: fmt.Sprintf(format, args...), Warning: true})
}

// fileOf is the included file key comes from, or "" for the config file.
func (l *loader) fileOf(key string) string {
	for key != "" {
		if f, ok := l.files[key]; ok {
			return f
		}
		i := strings.LastIndexAny(key, ".[")
		if i < 0 {
			break
		}
		key = key[:i]
	}
	return ""
}

// line returns the line of key, or of its nearest parent that is in the
// file (a missing key is reported where its parent is).
func (l *loader) line(key string) int { return lineOf(l.lines, key) }

func lineOf(lines map[string]int, key string) int {
	for key != "" {
		if n, ok := lines[key]; ok {
			return n
		}
		i := strings.LastIndexAny(key, ".[")
		if i < 0 {
			break
		}
		key = key[:i]
	}
	return 0
}

// Line is the line of key in the config file, or of its nearest parent
// that is in it; 0 when unknown.
func (c *Config) Line(key string) int { return lineOf(c.lines, key) }

// statePath is path for the files the bridge writes (spool, sandbox
// mail, audit log): under stateDir, by their last element, when set.
func (l *loader) statePath(p string) string {
	if l.stateDir != "" && p != "" && !filepath.IsAbs(p) {
		return filepath.Join(l.stateDir, filepath.Base(p))
	}
	return l.path(p)
}

// writable says whether this user may create files in dir.
func writable(dir string) bool {
	f, err := os.CreateTemp(dir, ".smtpbridge-write-check-*")
	if err != nil {
		return false
	}
	f.Close()
	os.Remove(f.Name())
	return true
}

// sandboxState sets where a sandbox config's state goes: beside the
// config, unless it was read from where this user may not write (the
// package's /usr/share/doc) or where no program should write even as
// root (/usr); then to a directory of the user's own. Every command
// finds the same spool, mail and audit log.
func (l *loader) sandboxState(cfg *Config) {
	if cfg.Sandbox.Dir == "" || (writable(l.dir) && !underUsr(l.dir)) {
		return
	}
	l.stateDir = sandboxStateDir()
	if err := os.MkdirAll(l.stateDir, 0o700); err != nil {
		l.errorf("sandbox", "%s is not writable by this user, nor is %s: %v; copy the config to a directory of your own", l.dir, l.stateDir, err)
	}
	l.warnf("sandbox", "the sandbox keeps its spool, mail and audit log in %s, not beside the config in %s", l.stateDir, l.dir)
}

// underUsr says whether dir is in /usr, the packages' read-only tree.
func underUsr(dir string) bool {
	return runtime.GOOS != "windows" && (dir == "/usr" || strings.HasPrefix(dir, "/usr/"))
}

// sandboxStateDir is the user's own directory for a sandbox's state:
// $XDG_STATE_HOME/smtpbridge-sandbox, ~/.local/state/smtpbridge-sandbox,
// or one in the temporary directory.
func sandboxStateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "smtpbridge-sandbox")
	}
	if home, err := os.UserHomeDir(); err == nil && home != "" && writable(home) {
		return filepath.Join(home, ".local", "state", "smtpbridge-sandbox")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("smtpbridge-sandbox-%d", os.Getuid()))
}

// path resolves a file name from the config relative to the config file's
// directory, so the bridge finds the same files whatever its working
// directory is.
func (l *loader) path(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(l.dir, p)
}

func (l *loader) parse(data []byte) *Config {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			l.errorf("", "the file is empty; start from examples/smtpbridge.yaml")
			return nil
		}
		l.errorf("", "not valid YAML: %v", err)
		return nil
	}
	if len(root.Content) == 0 || root.Content[0].Kind != yaml.MappingNode {
		l.errorf("", "the top level must be a mapping of keys (listeners:, tenants:, devices:, ...)")
		return nil
	}
	doc := root.Content[0]
	l.include(doc)
	l.expandEnv(doc, "")
	l.checkKeys(doc, reflect.TypeOf(Config{}), "")

	var cfg Config
	if err := doc.Decode(&cfg); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			for _, msg := range te.Errors {
				l.typeError(msg)
			}
		} else {
			l.errorf("", "%v", err)
		}
	}
	return &cfg
}

var yamlLineRE = regexp.MustCompile(`^line (\d+): (.*)$`)

// typeError turns yaml's "line 7: cannot unmarshal !!str `x` into int" into
// a problem with the key path of that line.
func (l *loader) typeError(msg string) {
	p := Problem{Message: msg}
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		p.Line, _ = strconv.Atoi(m[1])
		p.Message = m[2]
		for key, line := range l.lines {
			if line == p.Line && (p.Key == "" || len(key) > len(p.Key)) {
				p.Key = key
			}
		}
	}
	p.Message = strings.Replace(p.Message, "cannot unmarshal", "wrong type:", 1)
	if m := bareDurationRE.FindStringSubmatch(p.Message); m != nil {
		p.Message = fmt.Sprintf("%s has no unit: write a duration such as %ss (or %sm, %sh)", m[1], m[1], m[1], m[1])
	}
	l.problems = append(l.problems, p)
}

// bareDurationRE is yaml's complaint about a number where a duration
// goes (sync_timeout: 20).
var bareDurationRE = regexp.MustCompile("^wrong type: !!(?:int|float) `([0-9.]+)` into time.Duration$")

var envRE = regexp.MustCompile(`\$\$\{|\$\{([^}]*)\}?`)

// expandEnv replaces ${VAR} and ${VAR:-default} in every scalar value.
// "$${" stands for a literal "${". Keys are not expanded.
func (l *loader) expandEnv(n *yaml.Node, key string) {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i].Value
			l.expandEnv(n.Content[i+1], joinKey(key, k))
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			l.expandEnv(c, fmt.Sprintf("%s[%d]", key, i))
		}
	case yaml.ScalarNode:
		if !strings.Contains(n.Value, "${") {
			return
		}
		l.lines[key] = n.Line
		l.fromEnv[key] = true
		if m := envRE.FindStringSubmatch(n.Value); m != nil && m[1] != "" {
			if l.envNames == nil {
				l.envNames = map[string]string{}
			}
			l.envNames[key], _, _ = strings.Cut(m[1], ":-")
		}
		out := envRE.ReplaceAllStringFunc(n.Value, func(m string) string {
			if m == "$${" {
				return "${"
			}
			if !strings.HasSuffix(m, "}") {
				l.errorf(key, "unterminated ${ in value; write $${ for a literal ${")
				return m
			}
			name := m[2 : len(m)-1]
			// ${VAR:-default}: the default when VAR is unset or empty,
			// as in the shell and Docker Compose.
			name, def, hasDef := strings.Cut(name, ":-")
			if !validEnvName(name) {
				l.errorf(key, "%q is not a valid environment variable name", name)
				return m
			}
			v, ok := l.lookup(name)
			if hasDef && v == "" {
				return def
			}
			if !ok {
				l.errorf(key, "environment variable %s is not set; export it, give a default with ${%s:-value}, or remove ${%s} from the config", name, name, name)
				return ""
			}
			return v
		})
		n.Value = out
		if n.Style == 0 {
			// Let a plain scalar be re-typed after expansion, so that
			// "max_recipients: ${MAXR}" decodes as an int.
			n.Tag = ""
		}
	}
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		if !(c == '_' || 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || i > 0 && '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

func joinKey(prefix, k string) string {
	if prefix == "" {
		return k
	}
	return prefix + "." + k
}

// checkKeys walks the YAML against the Go type, records the line of every
// key and reports keys the type does not have, with a suggestion.
func (l *loader) checkKeys(n *yaml.Node, t reflect.Type, key string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case n.Kind == yaml.MappingNode && t.Kind() == reflect.Struct:
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			kn, vn := n.Content[i], n.Content[i+1]
			k := joinKey(key, kn.Value)
			l.lines[k] = kn.Line
			ft, ok := fields[kn.Value]
			if !ok {
				msg := "unknown key"
				if s := suggest(kn.Value, fields); s != "" {
					msg += fmt.Sprintf("; did you mean %q?", s)
				} else {
					msg += fmt.Sprintf(" (known here: %s)", strings.Join(sortedKeys(fields), ", "))
				}
				l.errorf(k, "%s", msg)
				continue
			}
			l.checkKeys(vn, ft, k)
		}
	case n.Kind == yaml.SequenceNode && t.Kind() == reflect.Slice:
		for i, c := range n.Content {
			k := fmt.Sprintf("%s[%d]", key, i)
			l.lines[k] = c.Line
			l.checkKeys(c, t.Elem(), k)
		}
	}
}

func yamlFields(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := fieldsOf(t)
	fieldCache.Store(t, m)
	return m
}

// fieldCache holds yamlFields' answers: a fleet's config asks for a
// device's fields 10,000 times. Its maps are only read.
var fieldCache sync.Map

func fieldsOf(t reflect.Type) map[string]reflect.Type {
	m := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		m[name] = f.Type
	}
	return m
}

func sortedKeys(m map[string]reflect.Type) []string {
	return slices.Sorted(maps.Keys(m))
}

// suggest returns the known key closest to k, if it is close enough to be
// a typo.
func suggest(k string, fields map[string]reflect.Type) string {
	best, bestD := "", 3
	for _, name := range sortedKeys(fields) {
		if d := editDistance(strings.ToLower(k), name); d < bestD {
			best, bestD = name, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
