package firewall

import (
	"fmt"
	"net/netip"
	"strings"
)

// splitRule splits one line of `iptables -S` output into arguments. iptables
// puts double quotes around arguments holding spaces or shell specials and
// escapes `"` and `\` inside them with a backslash.
func splitRule(line string) ([]string, error) {
	var (
		args   []string
		cur    strings.Builder
		inArg  bool
		quoted bool
	)
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quoted && c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case quoted && c == '"':
			quoted = false
		case quoted:
			cur.WriteByte(c)
		case c == '"':
			quoted, inArg = true, true
		case c == ' ' || c == '\t' || c == '\n':
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(c)
			inArg = true
		}
	}
	if quoted {
		return nil, fmt.Errorf("unterminated quote in rule %q", line)
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args, nil
}

// dropRule is a DROP rule found in our chain.
type dropRule struct {
	prefix netip.Prefix
	spec   []string // arguments after "-A CHAIN", usable with Delete
}

// parseDropRule reads a line of `iptables -S CHAIN`. ok is false for lines
// that are not `-A CHAIN ... -s PREFIX ... -j DROP` (the -N line, rules
// matching a set, other targets).
func parseDropRule(chain, line string) (dropRule, bool) {
	args, err := splitRule(line)
	if err != nil || len(args) < 2 || args[0] != "-A" || args[1] != chain {
		return dropRule{}, false
	}
	var src, target string
	for i := 2; i+1 < len(args); i++ {
		switch args[i] {
		case "-s", "--source":
			src = args[i+1]
		case "-j", "--jump":
			target = args[i+1]
		case "--match-set":
			return dropRule{}, false
		}
	}
	if target != "DROP" || src == "" {
		return dropRule{}, false
	}
	p, ok := parseSource(src)
	if !ok {
		return dropRule{}, false
	}
	return dropRule{prefix: p, spec: args[2:]}, true
}

// parseSource reads the source of a rule: an address or a prefix, as
// iptables prints it.
func parseSource(s string) (netip.Prefix, bool) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, false
		}
		a, bits := p.Addr(), p.Bits()
		if a.Is4In6() && bits >= 96 {
			a, bits = a.Unmap(), bits-96
		}
		return netip.PrefixFrom(a, bits).Masked(), true
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, false
	}
	return Single(a.Unmap()), true
}

// isJump reports whether line is the plain jump `-A from -j chain`.
func isJump(from, chain, line string) bool {
	args, err := splitRule(line)
	if err != nil {
		return false
	}
	return len(args) == 4 && args[0] == "-A" && args[1] == from &&
		(args[2] == "-j" || args[2] == "--jump") && args[3] == chain
}

// dropSpec is the rule IPTables appends for an entry.
func dropSpec(p netip.Prefix, comment string) []string {
	return []string{"-s", PrefixString(p), "-m", "comment", "--comment", comment, "-j", "DROP"}
}

// setSpec is the rule that drops what set holds.
func setSpec(set string) []string {
	return []string{"-m", "set", "--match-set", set, "src", "-j", "DROP"}
}

// matchedSet returns the set a line of `iptables -S CHAIN` drops the
// sources of (`-A CHAIN -m set --match-set NAME src -j DROP`), or "".
func matchedSet(chain, line string) string {
	args, err := splitRule(line)
	if err != nil || len(args) < 2 || args[0] != "-A" || args[1] != chain {
		return ""
	}
	want := append([]string{"-A", chain}, setSpec("")...)
	if len(args) != len(want) {
		return ""
	}
	for i := range args {
		if i != 5 && args[i] != want[i] {
			return ""
		}
	}
	return args[5]
}
