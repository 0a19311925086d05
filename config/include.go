package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Bounds of include: what one config may pull in.
const (
	maxIncludedFiles = 10000
	maxIncludedBytes = 64 << 20
)

// includable are the keys an included file may hold: lists that the
// config file's own lists are extended with.
var includable = []string{"tenants", "devices"}

// include reads the files the config's include: names (paths or glob
// patterns, relative to the config file's directory), each a mapping of
// tenants: and devices: lists, and appends their items to the config's
// own lists before anything is checked, so that each item is checked
// where it is: a problem in one names its file and line. An included file
// includes nothing further.
func (l *loader) include(doc *yaml.Node) {
	i := slices.IndexFunc(doc.Content, func(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Value == "include" })
	if i < 0 || i%2 != 0 {
		return
	}
	l.lines["include"] = doc.Content[i].Line
	patterns := doc.Content[i+1]
	// The key is consumed here: the rest of the loader never sees it.
	doc.Content = slices.Delete(doc.Content, i, i+2)
	var globs []*yaml.Node
	switch patterns.Kind {
	case yaml.ScalarNode:
		globs = []*yaml.Node{patterns}
	case yaml.SequenceNode:
		globs = patterns.Content
	default:
		l.errorf("include", "give a file or a list of files, e.g. [devices.d/*.yaml]")
		return
	}
	total := 0
	seen := map[string]bool{}
	for gi, g := range globs {
		key := fmt.Sprintf("include[%d]", gi)
		l.lines[key] = g.Line
		if g.Kind != yaml.ScalarNode || g.Value == "" {
			l.errorf(key, "give a file's path or a pattern such as devices.d/*.yaml")
			continue
		}
		pattern := g.Value
		if !filepath.IsAbs(pattern) {
			pattern = filepath.Join(l.dir, pattern)
		}
		matches, err := filepath.Glob(pattern)
		if err != nil {
			l.errorf(key, "%q is not a valid pattern: %v", g.Value, err)
			continue
		}
		if len(matches) == 0 && !hasMeta(g.Value) {
			l.errorf(key, "%s does not exist", pattern)
			continue
		}
		slices.Sort(matches)
		for _, path := range matches {
			if seen[path] || path == l.file {
				continue
			}
			seen[path] = true
			if len(seen) > maxIncludedFiles {
				l.errorf(key, "more than %d included files", maxIncludedFiles)
				return
			}
			n, err := l.includeFile(doc, path, maxIncludedBytes-total)
			total += n
			if err != nil {
				l.problems = append(l.problems, Problem{File: path, Message: err.Error()})
			}
		}
	}
}

// hasMeta says whether a path is a glob pattern (one matching nothing is
// no mistake: an empty devices.d/).
func hasMeta(p string) bool { return strings.ContainsAny(p, `*?[`) }

// includeFile appends path's tenants and devices to doc's and returns
// the bytes read.
func (l *loader) includeFile(doc *yaml.Node, path string, room int) (int, error) {
	// A device, a FIFO or a directory is no config (and opening a FIFO
	// would wait for a writer).
	if fi, err := os.Stat(path); err != nil {
		return 0, fmt.Errorf("cannot be read: %w", err)
	} else if !fi.Mode().IsRegular() {
		return 0, errors.New("is not a regular file")
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("cannot be read: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, int64(room)+1))
	if err != nil {
		return len(data), fmt.Errorf("cannot be read: %w", err)
	}
	if len(data) > room {
		return len(data), fmt.Errorf("the included files pass %d MiB together", maxIncludedBytes>>20)
	}
	var root yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return len(data), nil // an empty file adds nothing
		}
		return len(data), fmt.Errorf("not valid YAML: %v", err)
	}
	if len(root.Content) == 0 || root.Content[0].Kind != yaml.MappingNode {
		return len(data), errors.New("must be a mapping with tenants: and devices: lists")
	}
	m := root.Content[0]
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if !slices.Contains(includable, k.Value) {
			return len(data), fmt.Errorf("line %d: %s: an included file holds only tenants: and devices: lists (include: is read from the config file only)", k.Line, k.Value)
		}
		if v.Kind != yaml.SequenceNode {
			return len(data), fmt.Errorf("line %d: %s: must be a list", k.Line, k.Value)
		}
		into := listNode(doc, k.Value)
		for _, item := range v.Content {
			l.files[fmt.Sprintf("%s[%d]", k.Value, len(into.Content))] = path
			into.Content = append(into.Content, item)
		}
	}
	return len(data), nil
}

// listNode is doc's list under key, made if there is none.
func listNode(doc *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(doc.Content); i += 2 {
		if doc.Content[i].Value == key && doc.Content[i+1].Kind == yaml.SequenceNode {
			return doc.Content[i+1]
		}
		if doc.Content[i].Value == key && doc.Content[i+1].Kind == yaml.ScalarNode && doc.Content[i+1].Tag == "!!null" {
			doc.Content[i+1] = &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
			return doc.Content[i+1]
		}
	}
	seq := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	doc.Content = append(doc.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key}, seq)
	return seq
}
