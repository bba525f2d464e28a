package firewall

import (
	"errors"
	"fmt"
)

// Match says how the firewall matches banned addresses.
type Match string

// The ways of matching.
const (
	// MatchAuto uses kernel address sets where the kernel has them, else
	// one rule per ban, and says which in the log.
	MatchAuto Match = "auto"
	// MatchIPSet uses kernel address sets (IPSet), or fails.
	MatchIPSet Match = "ipset"
	// MatchRules puts one rule per ban in the chain (IPTables).
	MatchRules Match = "rules"
)

// New returns the real firewall opts.Match asks for: IPSet, IPTables, or
// with MatchAuto (the default) IPSet where the kernel answers ipset
// requests, else IPTables, with a warning saying why. It changes nothing.
func New(opts Options) (Firewall, error) {
	return newFirewall(opts, NewIPTables, openSets)
}

func newFirewall(opts Options, newIPT func(Options) (*IPTables, error), open func() (setTable, error)) (Firewall, error) {
	log := opts.Logger.With().Str("component", "firewall").Logger()
	newSets := func() (*IPSet, error) {
		ipt, err := newIPT(opts)
		if err != nil {
			return nil, err
		}
		t, err := open()
		if err != nil {
			return nil, err
		}
		return newIPSet(opts, ipt, t)
	}
	switch opts.Match {
	case MatchRules:
		fw, err := newIPT(opts)
		if err != nil {
			return nil, err
		}
		log.Info().Str("match", string(MatchRules)).Msg("one iptables rule per ban (firewall_match = \"rules\")")
		return fw, nil
	case MatchIPSet:
		fw, err := newSets()
		if err != nil {
			return nil, err
		}
		log.Info().Str("match", string(MatchIPSet)).Msg("bans in kernel address sets (ipset), one iptables rule per set")
		return fw, nil
	case MatchAuto, "":
	default:
		return nil, &Error{Op: "init", Err: fmt.Errorf("unknown match %q: want %s, %s or %s", opts.Match, MatchAuto, MatchIPSet, MatchRules)}
	}
	fw, err := newSets()
	if err == nil {
		log.Info().Str("match", string(MatchIPSet)).Msg("bans in kernel address sets (ipset), one iptables rule per set")
		return fw, nil
	}
	if !errors.Is(err, ErrSetsUnavailable) {
		return nil, err
	}
	log.Warn().Err(err).Str("match", string(MatchRules)).
		Msg("kernel address sets unavailable: one iptables rule per ban instead, slower for every packet when there are many bans (load the ip_set module, or set firewall_match = \"rules\" to silence this)")
	return newIPT(opts)
}
