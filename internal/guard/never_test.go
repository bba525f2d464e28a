package guard

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/astguard/astguard/internal/config"
)

// covers reports whether one of ps holds the address s.
func covers(ps []netip.Prefix, s string) bool {
	a := netip.MustParseAddr(s)
	return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Contains(a) })
}

// The guard never blocks the AMI server, the address it reaches it from,
// the allow-list or never_block.
func TestNeverBlock(t *testing.T) {
	t.Parallel()
	cfg := config.Default()
	cfg.AMI.Address = "127.0.0.1:5038"
	cfg.Allow.Networks = []string{"192.0.2.0/24"}
	cfg.Response.NeverBlock = []string{"2001:db8::7"}
	p, err := NeverBlock(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"127.0.0.1", "192.0.2.77", "2001:db8::7"} {
		if !covers(p, a) {
			t.Errorf("%s can be blocked: %v", a, p)
		}
	}
	for _, a := range []string{"127.0.0.2", "203.0.113.9"} {
		if covers(p, a) {
			t.Errorf("%s is protected but should not be: %v", a, p)
		}
	}
}

// A host name is resolved, every address it has is protected, and one that
// does not resolve is an error naming the key.
func TestAMIAddresses(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var asked []string
	lookup := func(_ context.Context, network, host string) ([]netip.Addr, error) {
		asked = append(asked, network+" "+host)
		if host == "pbx.example.net" {
			return []netip.Addr{netip.MustParseAddr("127.0.0.7"), netip.MustParseAddr("::ffff:127.0.0.8")}, nil
		}
		return nil, errors.New("no such host")
	}
	p, err := amiAddresses(ctx, "pbx.example.net:5038", lookup)
	if err != nil || !covers(p, "127.0.0.7") || !covers(p, "127.0.0.8") {
		t.Errorf("pbx.example.net: %v, %v", p, err)
	}
	if _, err := amiAddresses(ctx, "[::1]:5038", lookup); err != nil {
		t.Errorf("a literal address: %v", err)
	}
	if !slices.Equal(asked, []string{"ip pbx.example.net"}) {
		t.Errorf("lookups %v: a literal address needs none", asked)
	}
	p, err = amiAddresses(ctx, "down.example.net:5038", lookup)
	if want := "ami.address: cannot resolve down.example.net: no such host"; err == nil || err.Error() != want || p != nil {
		t.Errorf("unresolvable: %v, %v; want %s", p, err, want)
	}
}
