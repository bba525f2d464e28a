package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/astguard/astguard/internal/guard"
	"github.com/astguard/astguard/internal/incident"
	"github.com/astguard/astguard/internal/policy"
)

// cmdIncidents lists the incidents: from the running daemon, or from the
// state file when none runs.
func cmdIncidents(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("incidents", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (TOML); without it "+installedConfig+" if it exists, else the defaults' paths")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprint(stderr, "incidents: usage: guard incidents [--config FILE] [--json]\n")
		return 2
	}
	cfg, ok := configOrSay(configPathForAdmin(*path), stderr)
	if !ok {
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	now := time.Now()
	list, err := guard.NewAdminClient(cfg.Response.AdminSocket).Incidents(ctx)
	source := "daemon"
	if errors.Is(err, guard.ErrNoDaemon) {
		source = "state file (no guard running)"
		list, err = guard.IncidentsOffline(cfg.Response.StateFile, time.Duration(cfg.Response.IncidentQuiet), now)
	}
	if err != nil {
		fmt.Fprintf(stderr, "incidents: %v\n", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(list)
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "INCIDENT\tSTATE\tOF\tRULE\tSEVERITY\tOPENED\tLAST ALERT\tALERTS\tACTIONS\n")
	for _, recs := range [][]incident.Record{list.Open, list.Recent} {
		for i := range recs {
			r := &recs[i]
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", r.ID, incidentState(r), r.Key, r.Rule, r.Severity,
				r.Opened.UTC().Format(time.RFC3339), r.LastAlert.UTC().Format(time.RFC3339), r.AlertCount, actionSummary(r))
		}
	}
	_ = tw.Flush()
	fmt.Fprintf(stderr, "%d open, %d closed in the last 7 days, from the %s\n", len(list.Open), len(list.Recent), source)
	return 0
}

// incidentState is an incident's state for a person: stopped (open, its
// extension's new calls hung up), open, or how it closed.
func incidentState(r *incident.Record) string {
	switch {
	case r.Open() && r.Stopped:
		return "stopped"
	case r.Open():
		return "open"
	case r.CloseReason == incident.ClosedReleased:
		return "released"
	}
	return "closed"
}

// actionSummary says what each action of an incident came to, with the
// addresses block_ip acted on: "hangup done, block_ip done 127.0.0.2,
// rotate_secret done".
func actionSummary(r *incident.Record) string {
	if len(r.Actions) == 0 {
		return "-"
	}
	parts := make([]string, 0, len(r.Actions))
	for _, a := range r.Actions {
		p := a.Action.String() + " " + a.Result.String()
		if a.Action == policy.BlockIP {
			var targets []string
			for _, o := range a.Outcomes {
				if o.Target != "" && o.Target != r.Key.String() && !slices.Contains(targets, o.Target) {
					targets = append(targets, o.Target)
				}
			}
			if len(targets) > 0 {
				p += " " + strings.Join(targets, ",")
			}
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ", ")
}

// cmdRelease ends the open incident of an extension through the running
// daemon, or in the state file when none runs: the extension's new calls
// are no longer hung up.
func cmdRelease(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("release", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (TOML); without it "+installedConfig+" if it exists, else the defaults' paths")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprint(stderr, "release: usage: guard release [--config FILE] TECH/NAME (e.g. SIP/200)\n")
		return 2
	}
	key, err := guard.ParseExtension(fs.Arg(0))
	if err != nil {
		fmt.Fprintf(stderr, "release: %v\n", err)
		return 2
	}
	cfg, ok := configOrSay(configPathForAdmin(*path), stderr)
	if !ok {
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rel, err := guard.NewAdminClient(cfg.Response.AdminSocket).Release(ctx, key)
	offline := false
	if errors.Is(err, guard.ErrNoDaemon) {
		offline = true
		rel.Incident, err = guard.ReleaseOffline(cfg.Response.StateFile, time.Duration(cfg.Response.IncidentQuiet), key, time.Now())
	}
	if errors.Is(err, incident.ErrNotOpen) {
		fmt.Fprintf(stderr, "release: %s has no open incident: its calls are not hung up\n", key)
		return 1
	}
	if err != nil {
		fmt.Fprintf(stderr, "release: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: incident %s (%s) released: its new calls are no longer hung up; its bans stay (guard unblock lifts them)\n",
		key, rel.Incident.ID, rel.Incident.Rule)
	if offline {
		fmt.Fprint(stdout, "no guard running: the state file was updated\n")
	}
	if rel.Warning != "" {
		fmt.Fprintf(stderr, "release: warning: %s\n", rel.Warning)
	}
	return 0
}
