package config

import (
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
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			if c != nil {
				t.Fatal("Parse returned a Config with its error")
			}
			if err.Error() == "" {
				t.Fatal("empty error text")
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
