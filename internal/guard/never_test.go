package guard

import (
	"net/netip"
	"testing"

	"github.com/astguard/astguard/internal/config"
)

// The guard never blocks the AMI server, the address it reaches it from,
// the allow-list or never_block.
func TestNeverBlock(t *testing.T) {
	cfg := config.Default()
	cfg.AMI.Address = "127.0.0.1:5038"
	cfg.Allow.Networks = []string{"192.0.2.0/24"}
	cfg.Response.NeverBlock = []string{"2001:db8::7"}
	p, err := neverBlock(cfg)
	if err != nil {
		t.Fatal(err)
	}
	covered := func(s string) bool {
		a := netip.MustParseAddr(s)
		for _, pr := range p {
			if pr.Contains(a) {
				return true
			}
		}
		return false
	}
	for _, a := range []string{"127.0.0.1", "192.0.2.77", "2001:db8::7"} {
		if !covered(a) {
			t.Errorf("%s can be blocked: %v", a, p)
		}
	}
	for _, a := range []string{"127.0.0.2", "203.0.113.9"} {
		if covered(a) {
			t.Errorf("%s is protected but should not be: %v", a, p)
		}
	}
}
