package policy

import (
	"fmt"
	"net/netip"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/detector"
)

// Table is the [policy] table: the actions for each rule and severity,
// parsed once. It is read-only: a reload builds a new one.
type Table struct {
	sets [][2]Set // by detector.Rule, then by severity (Warning, Critical)
}

// NewTable parses the [policy] table of a configuration. A validated
// configuration always parses; the error names a rule of the detector the
// configuration has no table for, or an unknown action.
func NewTable(p *config.Policy) (*Table, error) {
	t := &Table{sets: make([][2]Set, 1)} // rule 0 is no rule
	for r := detector.Rule(1); r.String() != "unknown"; r++ {
		var sets [2]Set
		for i, sev := range [2]detector.Severity{detector.Warning, detector.Critical} {
			names := p.Actions(r.String(), sev.String())
			if names == nil {
				return nil, fmt.Errorf("policy: the configuration has no [policy.%s] table", r)
			}
			for _, name := range names {
				a, ok := ParseAction(name)
				if !ok {
					return nil, fmt.Errorf("policy.%s.%s: %q is not an action", r, sev, name)
				}
				sets[i] = sets[i].With(a)
			}
		}
		t.sets = append(t.sets, sets)
	}
	return t, nil
}

// Actions returns the actions the table names for an alert of rule r and
// severity s (none for a rule or severity it does not know).
func (t *Table) Actions(r detector.Rule, s detector.Severity) Set {
	if int(r) >= len(t.sets) || s != detector.Warning && s != detector.Critical {
		return 0
	}
	return t.sets[r][s-detector.Warning]
}

// Key is what an incident is about: an extension (Tech and Name) or, for
// the address rules, a source address (Addr).
type Key struct {
	Tech ami.Tech
	Name string     // the extension's bare name; "" for an address
	Addr netip.Addr // the address; zero for an extension
}

// ExtensionKey is the key of an extension.
func ExtensionKey(tech ami.Tech, name string) Key { return Key{Tech: tech, Name: name} }

// AddressKey is the key of an address (IPv4-mapped IPv6 unmapped).
func AddressKey(addr netip.Addr) Key { return Key{Addr: addr.Unmap()} }

// KeyOf is the key of an alert's incident: its extension, or its address.
func KeyOf(a *detector.Alert) Key {
	if a.IsExtension() {
		return ExtensionKey(a.Tech, a.Extension)
	}
	return AddressKey(a.IP)
}

// IsExtension reports whether the key is an extension's.
func (k Key) IsExtension() bool { return k.Name != "" }

// String is "SIP/200" for an extension, the address for an address.
func (k Key) String() string {
	if k.IsExtension() {
		return k.Tech.String() + "/" + k.Name
	}
	return k.Addr.String()
}
