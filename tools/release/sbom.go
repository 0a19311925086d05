package main

import (
	"crypto/rand"
	"debug/buildinfo"
	"encoding/json"
	"fmt"
	"io"
	"time"
)

// cdx is the part of CycloneDX 1.5 the SBOM uses.
type cdx struct {
	BOMFormat    string         `json:"bomFormat"`
	SpecVersion  string         `json:"specVersion"`
	SerialNumber string         `json:"serialNumber"`
	Version      int            `json:"version"`
	Metadata     cdxMetadata    `json:"metadata"`
	Components   []cdxComponent `json:"components"`
}

type cdxMetadata struct {
	Timestamp string       `json:"timestamp"`
	Component cdxComponent `json:"component"`
}

type cdxComponent struct {
	Type     string       `json:"type"`
	BOMRef   string       `json:"bom-ref"`
	Name     string       `json:"name"`
	Version  string       `json:"version"`
	PURL     string       `json:"purl"`
	Hashes   []cdxHash    `json:"hashes,omitempty"`
	Licenses []cdxLicense `json:"licenses,omitempty"`
}

// cdxLicense names a component's licence by its SPDX identifier.
type cdxLicense struct {
	License struct {
		ID string `json:"id"`
	} `json:"license"`
}

// License is smtpbridge's licence, as the LICENSE file, the packages and
// the SBOM name it.
const License = "Apache-2.0"

type cdxHash struct {
	Alg     string `json:"alg"`
	Content string `json:"content"`
}

// sbom writes a CycloneDX SBOM of the Go modules built into bin (the
// same in every target: the module graph does not change with GOOS).
func (r *release) sbom(bin string) error {
	name := fmt.Sprintf("smtpbridge_%s.cdx.json", r.version)
	r.step("SBOM %s", name)
	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		return fmt.Errorf("read the modules in %s: %w", bin, err)
	}
	purl := func(path, version string) string { return "pkg:golang/" + path + "@" + version }
	doc := cdx{BOMFormat: "CycloneDX", SpecVersion: "1.5", SerialNumber: "urn:uuid:" + uuid(), Version: 1,
		Metadata: cdxMetadata{Timestamp: time.Now().UTC().Format(time.RFC3339),
			Component: cdxComponent{Type: "application", BOMRef: purl(bi.Main.Path, "v"+r.version), Name: bi.Main.Path,
				Version: "v" + r.version, PURL: purl(bi.Main.Path, "v"+r.version)}}}
	var lic cdxLicense
	lic.License.ID = License
	doc.Metadata.Component.Licenses = []cdxLicense{lic}
	doc.Components = append(doc.Components, cdxComponent{Type: "library", BOMRef: "pkg:golang/stdlib@" + bi.GoVersion,
		Name: "stdlib", Version: bi.GoVersion, PURL: "pkg:golang/stdlib@" + bi.GoVersion})
	for _, m := range bi.Deps {
		if m.Replace != nil {
			m = m.Replace
		}
		c := cdxComponent{Type: "library", BOMRef: purl(m.Path, m.Version), Name: m.Path, Version: m.Version, PURL: purl(m.Path, m.Version)}
		if m.Sum != "" {
			// The go.sum hash: h1 is a SHA-256 of the module's file tree.
			c.Hashes = []cdxHash{{Alg: "SHA-256", Content: m.Sum}}
		}
		doc.Components = append(doc.Components, c)
	}
	return r.write(name, func(w io.Writer) error {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(doc)
	})
}

func uuid() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
