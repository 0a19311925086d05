package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/smtpbridge/smtpbridge/internal/durable"
)

// Edit is a change to a config file that leaves every line it does not
// change byte for byte as it was (comments, order, quoting, blank
// lines): the device commands add, change and remove list items by
// their place in the text, found through the YAML parser, not by
// writing the parsed document back.
type Edit struct {
	Path string
	orig []byte // the file as read: Commit refuses if it changed since
	text []byte
}

// maxEditBytes bounds a config file the device commands edit.
const maxEditBytes = 16 << 20

// OpenEdit reads the config file at path for editing.
func OpenEdit(path string) (*Edit, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	if len(data) > maxEditBytes {
		return nil, fmt.Errorf("%s: %d bytes: too large to edit (at most %d)", path, len(data), maxEditBytes)
	}
	return &Edit{Path: path, orig: data, text: bytes.Clone(data)}, nil
}

// Text is the file as edited so far.
func (e *Edit) Text() []byte { return e.text }

// DeviceEntry is a device as the device commands write it.
type DeviceEntry struct {
	Name, Username, PasswordHash, Tenant, Mailbox string
	Networks                                      []string
	FromPolicy, Transport                         string
}

// fields are the entry's keys and values in the order written.
func (d DeviceEntry) fields() [][2]string {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	f := [][2]string{{"name", q(d.Name)}, {"username", q(d.Username)}, {"password_hash", q(d.PasswordHash)},
		{"tenant", q(d.Tenant)}, {"mailbox", q(d.Mailbox)}}
	if len(d.Networks) > 0 {
		items := make([]string, len(d.Networks))
		for i, n := range d.Networks {
			items[i] = q(n)
		}
		f = append(f, [2]string{"networks", "[" + strings.Join(items, ", ") + "]"})
	}
	if d.FromPolicy != "" {
		f = append(f, [2]string{"from_policy", q(d.FromPolicy)})
	}
	if d.Transport != "" {
		f = append(f, [2]string{"transport", q(d.Transport)})
	}
	return f
}

// doc parses the text as it is now.
func (e *Edit) doc() (*yaml.Node, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(e.text, &root); err != nil {
		return nil, fmt.Errorf("%s: not valid YAML: %w", e.Path, err)
	}
	if len(root.Content) == 0 || root.Content[0].Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s: the top level is not a mapping of keys", e.Path)
	}
	return root.Content[0], nil
}

// devices returns the top-level devices list, nil when the file has
// none.
func devicesNode(doc *yaml.Node) (key, seq *yaml.Node) {
	for i := 0; i+1 < len(doc.Content); i += 2 {
		if doc.Content[i].Value == "devices" {
			return doc.Content[i], doc.Content[i+1]
		}
	}
	return nil, nil
}

// ErrNoDevice is returned for a device the file does not list.
var ErrNoDevice = errors.New("no such device in the config file")

// findDevice returns the devices list and the index of the item named
// name in it, -1 if none.
func (e *Edit) findDevice(name string) (*yaml.Node, int, error) {
	doc, err := e.doc()
	if err != nil {
		return nil, -1, err
	}
	_, seq := devicesNode(doc)
	if seq == nil || seq.Kind != yaml.SequenceNode {
		return seq, -1, nil
	}
	for i, item := range seq.Content {
		if v := mapValue(item, "name"); v != nil && v.Value == name {
			return seq, i, nil
		}
	}
	return seq, -1, nil
}

func mapValue(m *yaml.Node, key string) *yaml.Node {
	if m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// lines splits the text into lines, each with its line end.
func (e *Edit) lines() [][]byte {
	return bytes.SplitAfter(e.text, []byte("\n"))
}

func (e *Edit) setLines(ls [][]byte) { e.text = bytes.Join(ls, nil) }

// lastLine is the last line (1-based) any node under n is on.
func lastLine(n *yaml.Node) int {
	last := n.Line
	for _, c := range n.Content {
		last = max(last, lastLine(c))
	}
	if n.Kind == yaml.ScalarNode && (n.Style&(yaml.LiteralStyle|yaml.FoldedStyle)) != 0 {
		last += strings.Count(strings.TrimRight(n.Value, "\n"), "\n") + 1
	}
	return last
}

// AddDevice appends d to the file's devices list, in the style of its
// items (block or flow mappings), after the list's last item; a file
// without a devices list gets one at its end.
func (e *Edit) AddDevice(d DeviceEntry) error {
	seq, i, err := e.findDevice(d.Name)
	if err != nil {
		return err
	}
	if i >= 0 {
		return fmt.Errorf("%s already has a device named %q", e.Path, d.Name)
	}
	ls := e.lines()
	if len(ls) > 0 && !bytes.HasSuffix(ls[len(ls)-1], []byte("\n")) && len(ls[len(ls)-1]) > 0 {
		ls[len(ls)-1] = append(ls[len(ls)-1], '\n')
	}
	fields := d.fields()
	block := func(dash int) []byte {
		var b bytes.Buffer
		pad := strings.Repeat(" ", dash)
		for j, f := range fields {
			if j == 0 {
				fmt.Fprintf(&b, "%s- %s: %s\n", pad, f[0], f[1])
			} else {
				fmt.Fprintf(&b, "%s  %s: %s\n", pad, f[0], f[1])
			}
		}
		return b.Bytes()
	}
	switch {
	case seq == nil:
		e.setLines(append(ls, []byte("devices:\n"), block(2)))
		return nil
	case seq.Kind != yaml.SequenceNode:
		return fmt.Errorf("%s: devices is not a list", e.Path)
	case seq.Style&yaml.FlowStyle != 0:
		return fmt.Errorf("%s:%d: devices is written as a flow list ([...]); write it as a block list (one \"- \" line per device) for the device commands to edit it", e.Path, seq.Line)
	}
	last := seq.Content[len(seq.Content)-1]
	first := seq.Content[0]
	firstLine := string(ls[first.Line-1])
	dash := strings.IndexByte(firstLine, '-')
	if dash < 0 || dash >= first.Column-1 {
		return fmt.Errorf("%s:%d: cannot find the list's \"- \"", e.Path, first.Line)
	}
	var item []byte
	if first.Kind == yaml.MappingNode && first.Style&yaml.FlowStyle != 0 {
		parts := make([]string, len(fields))
		for j, f := range fields {
			parts[j] = f[0] + ": " + f[1]
		}
		item = []byte(strings.Repeat(" ", dash) + "- {" + strings.Join(parts, ", ") + "}\n")
	} else {
		item = block(dash)
	}
	at := lastLine(last) // insert after this line (1-based)
	out := slices.Concat(ls[:at], [][]byte{item}, ls[at:])
	e.setLines(out)
	return nil
}

// SetPasswordHash replaces the password_hash of device name.
func (e *Edit) SetPasswordHash(name, hash string) error {
	seq, i, err := e.findDevice(name)
	if err != nil {
		return err
	}
	if i < 0 {
		return fmt.Errorf("%w: %q in %s", ErrNoDevice, name, e.Path)
	}
	v := mapValue(seq.Content[i], "password_hash")
	if v == nil || v.Kind != yaml.ScalarNode {
		return fmt.Errorf("%s: device %q has no password_hash to replace", e.Path, name)
	}
	ls := e.lines()
	line := ls[v.Line-1]
	start := v.Column - 1
	end := scalarEnd(line, start, v.Style)
	if start >= len(line) || end <= start {
		return fmt.Errorf("%s:%d: cannot find device %q's password_hash in the line", e.Path, v.Line, name)
	}
	q, _ := json.Marshal(hash)
	ls[v.Line-1] = slices.Concat(line[:start], q, line[end:])
	e.setLines(ls)
	return nil
}

// scalarEnd is where a one-line scalar that starts at start ends.
func scalarEnd(line []byte, start int, style yaml.Style) int {
	if start >= len(line) {
		return -1
	}
	switch {
	case style&yaml.DoubleQuotedStyle != 0:
		for i := start + 1; i < len(line); i++ {
			switch line[i] {
			case '\\':
				i++
			case '"':
				return i + 1
			}
		}
		return -1
	case style&yaml.SingleQuotedStyle != 0:
		for i := start + 1; i < len(line); i++ {
			if line[i] == '\'' {
				if i+1 < len(line) && line[i+1] == '\'' {
					i++
					continue
				}
				return i + 1
			}
		}
		return -1
	}
	end := start
	for end < len(line) && !strings.ContainsRune(",}]\r\n", rune(line[end])) && !(line[end] == '#' && end > 0 && line[end-1] == ' ') {
		end++
	}
	for end > start && line[end-1] == ' ' {
		end--
	}
	return end
}

// RemoveDevice deletes device name's item: its lines, up to the next
// item or the end of the list.
func (e *Edit) RemoveDevice(name string) error {
	seq, i, err := e.findDevice(name)
	if err != nil {
		return err
	}
	if i < 0 {
		return fmt.Errorf("%w: %q in %s", ErrNoDevice, name, e.Path)
	}
	if seq.Style&yaml.FlowStyle != 0 {
		return fmt.Errorf("%s:%d: devices is written as a flow list ([...]); write it as a block list for the device commands to edit it", e.Path, seq.Line)
	}
	item := seq.Content[i]
	from := item.Line // 1-based, the "- " line
	to := lastLine(item)
	if i+1 < len(seq.Content) {
		to = seq.Content[i+1].Line - 1
		// Comments and blank lines just above the next item are its own.
		ls := e.lines()
		for to > lastLine(item) {
			t := strings.TrimSpace(string(ls[to-1]))
			if t != "" && !strings.HasPrefix(t, "#") {
				break
			}
			to--
		}
	}
	ls := e.lines()
	e.setLines(slices.Concat(ls[:from-1], ls[to:]))
	return nil
}

// ErrChanged is returned by Commit when the file changed since it was
// read.
var ErrChanged = errors.New("the config file changed since it was read")

// Commit writes the edited text, after a backup of the file as it was
// (PATH.bak), atomically and durably; it refuses, writing nothing, when
// the file on disk is no longer what OpenEdit read (another edit).
func (e *Edit) Commit() (backup string, err error) {
	now, err := os.ReadFile(e.Path)
	if err != nil {
		return "", fmt.Errorf("read config: %w", err)
	}
	if !bytes.Equal(now, e.orig) {
		return "", fmt.Errorf("%s: %w; nothing was written: run the command again", e.Path, ErrChanged)
	}
	info, err := os.Stat(e.Path)
	if err != nil {
		return "", err
	}
	backup = e.Path + ".bak"
	if err := durable.WriteFile(backup, e.orig, info.Mode().Perm()); err != nil {
		return "", fmt.Errorf("back up the config: %w", err)
	}
	if err := durable.WriteFile(e.Path, e.text, info.Mode().Perm()); err != nil {
		return "", fmt.Errorf("write config: %w", err)
	}
	return backup, nil
}

// Check loads the edited text as the config would be, from a temporary
// file beside the config (so that its relative paths and includes
// resolve the same), with the environment's variables.
func (e *Edit) Check(lookup func(string) (string, bool)) (*Config, error) {
	dir := filepath.Dir(e.Path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(e.Path)+".check-*")
	if err != nil {
		return nil, fmt.Errorf("check the edited config: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(e.text); err != nil {
		f.Close()
		return nil, fmt.Errorf("check the edited config: %w", err)
	}
	f.Close()
	cfg, err := LoadWithEnv(f.Name(), lookup)
	var ce *Error
	if errors.As(err, &ce) {
		ce.File = e.Path
	}
	if cfg != nil {
		cfg.Path = e.Path
	}
	return cfg, err
}
