package firewall

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// restoreWait is how long a legacy iptables-restore waits for the xtables
// lock (the nft backend has none).
const restoreWait = 5

// runRestore feeds input to `iptables-restore --noflush` (v6:
// ip6tables-restore) of the same backend as the iptables command the
// rules are listed with, so a batch never lands in the other backend's
// tables. Debian's iptables and ip6tables are symlinks (through
// /etc/alternatives) to xtables-nft-multi or xtables-legacy-multi, which
// run the tool named by their first argument.
func runRestore(ctx context.Context, v6 bool, input []byte) error {
	name, args, err := restoreCommand(v6)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = bytes.NewReader(input)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return &restoreError{err: err, out: strings.TrimSpace(out.String())}
	}
	return nil
}

// restoreCommand returns the iptables-restore (v6: ip6tables-restore)
// command of the backend the iptables command in PATH uses.
func restoreCommand(v6 bool) (string, []string, error) {
	tool := "iptables"
	if v6 {
		tool = "ip6tables"
	}
	bin, err := exec.LookPath(tool)
	if err != nil {
		return "", nil, err
	}
	real, err := filepath.EvalSymlinks(bin)
	if err != nil {
		return "", nil, err
	}
	base := filepath.Base(real)
	args := []string{"--noflush"}
	if strings.Contains(base, "legacy") {
		args = append(args, fmt.Sprintf("--wait=%d", restoreWait))
	}
	if strings.HasPrefix(base, "xtables-") && strings.HasSuffix(base, "-multi") {
		return real, append([]string{tool + "-restore"}, args...), nil
	}
	return filepath.Join(filepath.Dir(bin), tool+"-restore"), args, nil
}

// restoreError is a failed iptables-restore: its exit status and what it
// said, read like go-iptables' errors (ExitStatus) so that temporary()
// classifies both alike.
type restoreError struct {
	err error
	out string
}

func (e *restoreError) Error() string {
	if e.out == "" {
		return "iptables-restore: " + e.err.Error()
	}
	return "iptables-restore: " + e.err.Error() + ": " + e.out
}

func (e *restoreError) Unwrap() error { return e.err }

// ExitStatus is the command's exit status, or -1 when it did not run.
func (e *restoreError) ExitStatus() int {
	if ee, ok := e.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// quoteRule joins the arguments of a rule for iptables-restore, quoting
// those holding spaces or quote characters as iptables -S prints them.
func quoteRule(args []string) string {
	parts := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"\\'") {
			a = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(a) + `"`
		}
		parts[i] = a
	}
	return strings.Join(parts, " ")
}
