package firewall

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// fakeErr looks like go-iptables' *Error to the code under test.
type fakeErr struct {
	status int
	msg    string
}

func (e *fakeErr) Error() string   { return fmt.Sprintf("exit status %d: %s", e.status, e.msg) }
func (e *fakeErr) ExitStatus() int { return e.status }
func (e *fakeErr) IsNotExist() bool {
	for _, p := range []string{"Bad rule (does a matching rule exist in that chain?)", "No chain/target/match by that name", "does not exist"} {
		if strings.Contains(e.msg, p) {
			return true
		}
	}
	return false
}

var (
	errNoChain   = &fakeErr{1, "iptables: No chain/target/match by that name.\n"}
	errBadRule   = &fakeErr{1, "iptables: Bad rule (does a matching rule exist in that chain?).\n"}
	errExists    = &fakeErr{1, "iptables: Chain already exists.\n"}
	errLock      = &fakeErr{4, "Another app is currently holding the xtables lock. Stopped waiting after 5s.\n"}
	errPerm      = &fakeErr{4, "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)\n"}
	errChainBusy = &fakeErr{1, "iptables: Directory not empty.\n"}
)

// fakeTable is an in-memory filter table with iptables' semantics as far as
// IPTables relies on them.
type fakeTable struct {
	mu     sync.Mutex
	chains map[string][][]string // chain -> rule specs; builtin INPUT always exists
	order  []string              // user chains in creation order
	calls  []string
	fail   func(method string, args []string) error // nil: no failure
}

var _ ruleTable = (*fakeTable)(nil)

func newFakeTable() *fakeTable {
	return &fakeTable{chains: map[string][][]string{"INPUT": nil}}
}

func (f *fakeTable) enter(method string, args ...string) error {
	f.calls = append(f.calls, method+" "+strings.Join(args, " "))
	if f.fail != nil {
		return f.fail(method, args)
	}
	return nil
}

func (f *fakeTable) ChainExists(table, chain string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("ChainExists", chain); err != nil {
		return false, err
	}
	_, ok := f.chains[chain]
	return ok, nil
}

func (f *fakeTable) NewChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("NewChain", chain); err != nil {
		return err
	}
	if _, ok := f.chains[chain]; ok {
		return errExists
	}
	f.chains[chain] = nil
	f.order = append(f.order, chain)
	return nil
}

func (f *fakeTable) ClearChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("ClearChain", chain); err != nil {
		return err
	}
	if _, ok := f.chains[chain]; !ok {
		f.order = append(f.order, chain)
	}
	f.chains[chain] = nil
	return nil
}

func (f *fakeTable) DeleteChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("DeleteChain", chain); err != nil {
		return err
	}
	rules, ok := f.chains[chain]
	if !ok {
		return errNoChain
	}
	if len(rules) > 0 || f.referenced(chain) {
		return errChainBusy
	}
	delete(f.chains, chain)
	f.order = slices.DeleteFunc(f.order, func(c string) bool { return c == chain })
	return nil
}

func (f *fakeTable) referenced(chain string) bool {
	for _, rules := range f.chains {
		for _, r := range rules {
			if i := slices.Index(r, "-j"); i >= 0 && i+1 < len(r) && r[i+1] == chain {
				return true
			}
		}
	}
	return false
}

func (f *fakeTable) checkTarget(spec []string) error {
	if i := slices.Index(spec, "-j"); i >= 0 && i+1 < len(spec) {
		t := spec[i+1]
		if t != "DROP" && t != "ACCEPT" && t != "RETURN" {
			if _, ok := f.chains[t]; !ok {
				return errNoChain
			}
		}
	}
	return nil
}

func (f *fakeTable) Insert(table, chain string, pos int, spec ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Insert", append([]string{chain, fmt.Sprint(pos)}, spec...)...); err != nil {
		return err
	}
	rules, ok := f.chains[chain]
	if !ok {
		return errNoChain
	}
	if err := f.checkTarget(spec); err != nil {
		return err
	}
	if pos < 1 || pos > len(rules)+1 {
		return &fakeErr{1, "iptables: Index of insertion too big.\n"}
	}
	f.chains[chain] = slices.Insert(rules, pos-1, slices.Clone(spec))
	return nil
}

func (f *fakeTable) Append(table, chain string, spec ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Append", append([]string{chain}, spec...)...); err != nil {
		return err
	}
	rules, ok := f.chains[chain]
	if !ok {
		return errNoChain
	}
	if err := f.checkTarget(spec); err != nil {
		return err
	}
	f.chains[chain] = append(rules, slices.Clone(spec))
	return nil
}

func (f *fakeTable) Delete(table, chain string, spec ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Delete", append([]string{chain}, spec...)...); err != nil {
		return err
	}
	rules, ok := f.chains[chain]
	if !ok {
		return errNoChain
	}
	want := canonical(spec)
	for i, r := range rules {
		if slices.Equal(canonical(r), want) {
			f.chains[chain] = slices.Delete(rules, i, i+1)
			return nil
		}
	}
	return errBadRule
}

// canonical writes addresses the way iptables -S prints them.
func canonical(spec []string) []string {
	out := slices.Clone(spec)
	for i := 0; i+1 < len(out); i++ {
		if out[i] == "-s" && !strings.Contains(out[i+1], "/") {
			if a, err := netip.ParseAddr(out[i+1]); err == nil {
				out[i+1] = netip.PrefixFrom(a, a.BitLen()).String()
			}
		}
	}
	return out
}

func (f *fakeTable) List(table, chain string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("List", chain); err != nil {
		return nil, err
	}
	rules, ok := f.chains[chain]
	if !ok {
		return nil, &fakeErr{1, "iptables v1.8.9 (nf_tables): chain `" + chain + "' in table `filter' is incompatible, use 'nft' tool.\n"}
	}
	var out []string
	if chain == "INPUT" {
		out = append(out, "-P INPUT ACCEPT")
	} else {
		out = append(out, "-N "+chain)
	}
	for _, r := range rules {
		out = append(out, "-A "+chain+" "+quoteArgs(canonical(r)))
	}
	return out, nil
}

// restore applies an iptables-restore --noflush input of -A and -D lines
// in the filter table, all or nothing, as iptables-restore does.
func (f *fakeTable) restore(input []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	lines := strings.Split(strings.TrimSpace(string(input)), "\n")
	if len(lines) < 2 || lines[0] != "*filter" || lines[len(lines)-1] != "COMMIT" {
		return fmt.Errorf("fake restore: bad input %q", input)
	}
	f.calls = append(f.calls, fmt.Sprintf("Restore %d", len(lines)-2))
	if f.fail != nil {
		if err := f.fail("Restore", lines); err != nil {
			return err
		}
	}
	next := map[string][][]string{}
	for c, rules := range f.chains {
		next[c] = slices.Clone(rules)
	}
	for _, l := range lines[1 : len(lines)-1] {
		args, err := splitRule(l)
		if err != nil || len(args) < 3 {
			return fmt.Errorf("fake restore: bad line %q", l)
		}
		rules, ok := next[args[1]]
		if !ok {
			return &restoreError{err: errors.New("exit status 1"), out: "line: chain " + args[1] + " does not exist"}
		}
		switch args[0] {
		case "-A":
			next[args[1]] = append(rules, args[2:])
		case "-D":
			want := canonical(args[2:])
			i := slices.IndexFunc(rules, func(r []string) bool { return slices.Equal(canonical(r), want) })
			if i < 0 {
				return &restoreError{err: errors.New("exit status 1"), out: "line: Bad rule (does a matching rule exist in that chain?)"}
			}
			next[args[1]] = slices.Delete(rules, i, i+1)
		default:
			return fmt.Errorf("fake restore: %q not supported", args[0])
		}
	}
	f.chains = next
	return nil
}

// rules returns the specs of chain joined by spaces, as iptables -S would.
func (f *fakeTable) rules(chain string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.chains[chain] {
		out = append(out, strings.Join(canonical(r), " "))
	}
	return out
}

func (f *fakeTable) hasChain(chain string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.chains[chain]
	return ok
}

func (f *fakeTable) setFail(fn func(method string, args []string) error) {
	f.mu.Lock()
	f.fail = fn
	f.mu.Unlock()
}

func (f *fakeTable) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

// quoteArgs joins args like iptables -S does.
func quoteArgs(args []string) string {
	parts := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"\\'$;&|()<>*?!#=,") {
			a = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(a) + `"`
		}
		parts[i] = a
	}
	return strings.Join(parts, " ")
}

// fakeFlows records conntrack deletions.
type fakeFlows struct {
	mu      sync.Mutex
	deleted []netip.Prefix
	dumps   int
	err     error
	gate    chan struct{} // when set, a dump waits for it to close
	entered chan struct{} // when set, a dump sends on it first
}

func (f *fakeFlows) DeleteFlows(ctx context.Context, prefixes []netip.Prefix) (int, error) {
	f.mu.Lock()
	gate, entered := f.gate, f.entered
	f.mu.Unlock()
	if entered != nil {
		entered <- struct{}{}
	}
	if gate != nil {
		<-gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dumps++
	if f.err != nil {
		return 0, f.err
	}
	f.deleted = append(f.deleted, prefixes...)
	return len(prefixes), nil
}

// sorted returns the prefixes deleted, sorted.
func (f *fakeFlows) sorted() []netip.Prefix {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.SortedFunc(slices.Values(f.deleted), ComparePrefix)
}

// pfx is the prefix of the single address a.
func pfx(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// pfxs are the prefixes of the single addresses as.
func pfxs(as ...netip.Addr) []netip.Prefix {
	out := make([]netip.Prefix, len(as))
	for i, a := range as {
		out[i] = pfx(a)
	}
	return out
}

// entry is what Block gets to drop a with comment.
func entry(a netip.Addr, comment string) Entry { return Entry{Prefix: pfx(a), Comment: comment} }

// addrsIn returns the addresses of entries, in order.
func addrsIn(es []Entry) []netip.Addr {
	out := make([]netip.Addr, len(es))
	for i, e := range es {
		out[i] = e.Prefix.Addr()
	}
	return out
}

// fakeOpener hands out v4 and v6 tables, or errors.
type fakeOpener struct {
	v4, v6       *fakeTable
	err4, err6   error
	lockWaitSeen time.Duration
}

func (o *fakeOpener) open(v6 bool, lockWait time.Duration) (ruleTable, error) {
	o.lockWaitSeen = lockWait
	if v6 {
		if o.err6 != nil {
			return nil, o.err6
		}
		return o.v6, nil
	}
	if o.err4 != nil {
		return nil, o.err4
	}
	return o.v4, nil
}
