package main

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/action/firewall"
)

// guard unblock of an address inside a banned IPv6 /64 lifts the ban of
// the network and says so, with no guard running (the dry-run firewall of
// the configuration: no root needed).
func TestUnblockAddressInBannedNetwork(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "bans.json")
	m, err := bans.New(bans.Options{Firewall: firewall.NewDryRun(zerolog.Nop()), StatePath: state, IPv6Prefix: 64, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Ban(context.Background(), bans.Request{Addr: netip.MustParseAddr("2001:db8:1:2::5"), TTL: time.Hour, Reason: "auth_failures critical"}); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "guard.toml")
	toml := fmt.Sprintf("[response]\nfirewall = \"dry-run\"\nstate_file = %q\nsecrets_file = %q\nadmin_socket = %q\n",
		state, filepath.Join(dir, "s.jsonl"), filepath.Join(dir, "admin.sock"))
	if err := os.WriteFile(cfg, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"unblock", "--config", cfg, "2001:db8:1:2::99"}, &stdout, &stderr); code != 0 {
		t.Fatalf("guard unblock: exit %d: %s", code, stderr.String())
	}
	for _, want := range []string{
		"2001:db8:1:2::99 unblocked (no guard running: state file and firewall updated)",
		"the ban of 2001:db8:1:2::/64, the network holding it, is lifted",
	} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("stdout %q does not say %q", stdout.String(), want)
		}
	}
	st, err := bans.ReadState(state)
	if err != nil || len(st.Bans) != 0 {
		t.Fatalf("state after guard unblock: %+v, %v", st.Bans, err)
	}
}
