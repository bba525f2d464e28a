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

// fakeFW is an in-memory firewall with injectable failures.
type fakeFW struct {
	mu         sync.Mutex
	rules      map[netip.Addr]string
	calls      []string
	blockErr   error
	unblockErr error
	blockedErr error
	flushSetup bool // Setup flushes, like IPTables by default
	onBlock    func(netip.Addr)
	setups     int
	teardowns  int
	dryRun     bool // Real reports false: a stand-in for firewall.DryRun
}

var _ firewall.Firewall = (*fakeFW)(nil)

func newFakeFW() *fakeFW { return &fakeFW{rules: make(map[netip.Addr]string)} }

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

func (f *fakeFW) Block(ctx context.Context, addr netip.Addr, comment string) error {
	f.mu.Lock()
	hook := f.onBlock
	f.mu.Unlock()
	if hook != nil {
		hook(addr)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "block "+addr.String())
	if f.blockErr != nil {
		return f.blockErr
	}
	f.rules[addr] = comment
	return nil
}

func (f *fakeFW) Unblock(ctx context.Context, addr netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "unblock "+addr.String())
	if f.unblockErr != nil {
		return f.unblockErr
	}
	delete(f.rules, addr)
	return nil
}

func (f *fakeFW) Blocked(ctx context.Context) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.blockedErr != nil {
		return nil, f.blockedErr
	}
	return f.addrsLocked(), nil
}

func (f *fakeFW) Rules(ctx context.Context) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "rules")
	if f.blockedErr != nil {
		return nil, f.blockedErr
	}
	return f.addrsLocked(), nil
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

func (f *fakeFW) addrsLocked() []netip.Addr {
	as := slices.Collect(maps.Keys(f.rules))
	slices.SortFunc(as, func(a, b netip.Addr) int { return a.Compare(b) })
	return as
}

// addrs is what the firewall drops now.
func (f *fakeFW) addrs() []netip.Addr {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.addrsLocked()
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
