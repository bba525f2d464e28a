package bans

import (
	"bytes"
	"context"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/astguard/astguard/internal/action/firewall"
)

// fakeFW is an in-memory firewall with injectable failures. It records a
// call per entry: "block ADDR", "unblock ADDR" (a prefix is written as
// one, 2001:db8::/64).
type fakeFW struct {
	mu         sync.Mutex
	rules      map[netip.Prefix]firewall.Entry
	calls      []string
	blockErr   error
	unblockErr error
	blockedErr error
	flushSetup bool // Setup flushes, like IPTables by default
	onBlock    func(netip.Addr)
	setups     int
	teardowns  int
	batches    []int // the size of each Block
	dryRun     bool  // Real reports false: a stand-in for firewall.DryRun
}

var _ firewall.Firewall = (*fakeFW)(nil)

func newFakeFW() *fakeFW { return &fakeFW{rules: make(map[netip.Prefix]firewall.Entry)} }

func (f *fakeFW) Setup(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "setup")
	f.setups++
	if f.flushSetup {
		clear(f.rules)
	}
	return nil
}

func (f *fakeFW) Block(ctx context.Context, entries ...firewall.Entry) error {
	f.mu.Lock()
	hook := f.onBlock
	f.batches = append(f.batches, len(entries))
	f.mu.Unlock()
	for _, e := range entries {
		if hook != nil {
			hook(e.Prefix.Addr())
		}
		f.mu.Lock()
		f.calls = append(f.calls, "block "+firewall.PrefixString(e.Prefix))
		err := f.blockErr
		if err == nil {
			f.rules[e.Prefix] = e
		}
		f.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeFW) Unblock(ctx context.Context, prefixes ...netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range prefixes {
		f.calls = append(f.calls, "unblock "+firewall.PrefixString(p))
		if f.unblockErr != nil {
			return f.unblockErr
		}
		delete(f.rules, p)
	}
	return nil
}

func (f *fakeFW) Blocked(ctx context.Context) ([]firewall.Entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.blockedErr != nil {
		return nil, f.blockedErr
	}
	out := slices.Collect(maps.Values(f.rules))
	slices.SortFunc(out, func(a, b firewall.Entry) int { return firewall.ComparePrefix(a.Prefix, b.Prefix) })
	return out, nil
}

func (f *fakeFW) Rules(ctx context.Context) ([]netip.Prefix, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "rules")
	if f.blockedErr != nil {
		return nil, f.blockedErr
	}
	return f.prefixesLocked(), nil
}

func (f *fakeFW) Real() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.dryRun
}

func (f *fakeFW) Teardown(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.teardowns++
	clear(f.rules)
	return nil
}

func (f *fakeFW) prefixesLocked() []netip.Prefix {
	ps := slices.Collect(maps.Keys(f.rules))
	slices.SortFunc(ps, firewall.ComparePrefix)
	return ps
}

// addrs is the addresses of what the firewall drops now (a network's
// address for a network).
func (f *fakeFW) addrs() []netip.Addr {
	f.mu.Lock()
	defer f.mu.Unlock()
	ps := f.prefixesLocked()
	out := make([]netip.Addr, len(ps))
	for i, p := range ps {
		out[i] = p.Addr()
	}
	return out
}

// prefixes is what the firewall drops now.
func (f *fakeFW) prefixes() []netip.Prefix {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.prefixesLocked()
}

// put puts an entry for a in the firewall, as someone (or an earlier run)
// did.
func (f *fakeFW) put(a netip.Addr, comment string) {
	f.mu.Lock()
	f.rules[single(a)] = firewall.Entry{Prefix: single(a), Comment: comment}
	f.mu.Unlock()
}

// comment is the comment of a's entry.
func (f *fakeFW) comment(a netip.Addr) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rules[single(a)].Comment
}

func (f *fakeFW) flush() {
	f.mu.Lock()
	clear(f.rules)
	f.mu.Unlock()
}

func (f *fakeFW) set(fn func(f *fakeFW)) {
	f.mu.Lock()
	fn(f)
	f.mu.Unlock()
}

func (f *fakeFW) countCalls(prefix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

// logBuf collects log lines safely.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
	t   *testing.T
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.t != nil {
		l.t.Logf("%s", bytes.TrimSpace(p))
	}
	return l.buf.Write(p)
}

// count returns how many lines carry message msg.
func (l *logBuf) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), `"message":"`+msg+`"`)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
