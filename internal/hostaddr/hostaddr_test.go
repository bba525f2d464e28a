package hostaddr

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
)

// An address is taken as it is, with the local address that reaches it
// (loopback from loopback), each once; a name is resolved; a failed
// resolution is returned.
func TestProtect(t *testing.T) {
	noLookup := func(context.Context, string, string) ([]netip.Addr, error) {
		t.Fatal("an address was looked up")
		return nil, nil
	}
	got, err := Protect(t.Context(), "127.0.0.1", "5038", noLookup)
	if err != nil || !slices.Equal(got, []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}) {
		t.Errorf("127.0.0.1: %v, %v", got, err)
	}
	lookup := func(_ context.Context, _, host string) ([]netip.Addr, error) {
		if host != "pbx.example" {
			return nil, errors.New("no such host")
		}
		return []netip.Addr{netip.MustParseAddr("::ffff:127.0.0.2"), netip.MustParseAddr("127.0.0.2")}, nil
	}
	got, err = Protect(t.Context(), "pbx.example", "5038", lookup)
	if err != nil || !slices.Contains(got, netip.MustParsePrefix("127.0.0.2/32")) || len(got) > 2 {
		t.Errorf("pbx.example: %v, %v (want 127.0.0.2 once, and the local address reaching it)", got, err)
	}
	if _, err := Protect(t.Context(), "gone.example", "5038", lookup); err == nil {
		t.Error("a failed resolution gave no error")
	}
}
