package config

import (
	"bytes"
	"reflect"
	"testing"
)

func FuzzParse(f *testing.F) {
	f.Add(readExample(f))
	for _, tc := range badConfigs {
		f.Add([]byte(tc.toml))
	}
	f.Add([]byte("[ami]\naddress = \n"))
	f.Add([]byte("[[detector.international]]\n[detector.international.x]\n"))
	f.Add([]byte("a.b.c.d = [[1], {x = 2}, 1979-05-27T07:32:00Z]\n"))
	f.Add([]byte("[allow]\nnetworks = [\n  \"0.0.0.0/0\",\n  '10.1.2.3/8',\n]\nconfirm_wide = [\"::/0\"]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		lines := keyLines(string(data)) // ends, and does not panic, on anything
		for k, l := range lines {
			if l < 1 || l > bytes.Count(data, []byte("\n"))+1 {
				t.Fatalf("keyLines: %s at line %d", k, l)
			}
		}
		c, err := Parse(data)
		if err != nil {
			if c != nil {
				t.Fatal("Parse returned a Config with its error")
			}
			if err.Error() == "" {
				t.Fatal("empty error text")
			}
			for _, p := range Problems(err) {
				if p.Line < 0 || p.Line > bytes.Count(data, []byte("\n"))+1 || p.Error() != p.Text {
					t.Fatalf("problem %+v", p)
				}
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted a config that Validate rejects: %v", err)
		}
		d := c.Detector()
		if len(d.AllowNetworks) != len(c.Allow.Networks) {
			t.Fatalf("Detector() kept %d of %d networks", len(d.AllowNetworks), len(c.Allow.Networks))
		}
		for _, p := range d.AllowNetworks {
			if !p.IsValid() || p != p.Masked() {
				t.Fatalf("bad network %v", p)
			}
		}
		nb := c.NeverBlock()
		if len(nb) != len(c.Response.NeverBlock)+len(c.Allow.Networks) {
			t.Fatalf("NeverBlock() kept %d of %d networks", len(nb), len(c.Response.NeverBlock)+len(c.Allow.Networks))
		}
		for _, p := range nb {
			if !p.IsValid() || p != p.Masked() {
				t.Fatalf("bad never_block network %v", p)
			}
		}
		// Parsing is deterministic.
		again, err := Parse(data)
		if err != nil || !reflect.DeepEqual(c, again) {
			t.Fatalf("second Parse differs: %v", err)
		}
	})
}
