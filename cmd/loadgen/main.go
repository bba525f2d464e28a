// Command loadgen plays a synthetic Asterisk 20 over AMI on loopback at a
// chosen event rate and runs the guard against it in the same process, then
// reports the rate sustained, drops, attacks caught and missed, reaction
// times and the guard's CPU and memory. See internal/loadgen.
//
//	go run ./cmd/loadgen --rate 100000 --duration 10m --cpuprofile cpu.pprof
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/astguard/astguard/internal/loadgen"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o loadgen.Options
	fs.Float64Var(&o.Rate, "rate", 2000, "AMI events per second to send")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "how long to send")
	fs.IntVar(&o.Extensions, "extensions", 2000, "legitimate extensions (raised when needed so that none makes more than --max-cpm calls a minute)")
	fs.Float64Var(&o.MaxCallsPerMinute, "max-cpm", 6, "most calls a minute one legitimate extension makes")
	fs.IntVar(&o.Attacks, "attacks", 10, "attacks placed at random moments (burst, pjsip-hunt, brute-force, slow-hunt in turn)")
	fs.Int64Var(&o.Seed, "seed", 1, "seed of the random placement")
	fs.DurationVar(&o.SlowInterval, "slow-interval", 20*time.Second, "between the calls of a slow hunt (at most --duration/8)")
	fs.BoolVar(&o.AllEvents, "all-events", false, "send every event class (VarSet, Newexten, Cdr ...) whatever the guard's Events action asks")
	fs.IntVar(&o.QueueSize, "queue-size", 0, "the guard's ami.queue_size (0: the default, 65536)")
	fs.StringVar(&o.CPUProfile, "cpuprofile", "", "write a pprof CPU profile of the run to this file")
	fs.StringVar(&o.StallDump, "stall-dump", "", "write every goroutine's stack to this file the first time a write to the guard blocks for over 500 ms")
	logFile := fs.String("guard-log", "", "write the guard's log (JSON lines) to this file (default: discarded)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *logFile != "" {
		f, err := os.Create(*logFile)
		if err != nil {
			fmt.Fprintf(stderr, "loadgen: %v\n", err)
			return 1
		}
		defer f.Close()
		o.GuardLog = f
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := loadgen.Run(ctx, o)
	if err != nil {
		fmt.Fprintf(stderr, "loadgen: %v\n", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return 1
		}
	} else {
		rep.Text(stdout)
	}
	if rep.Missed > 0 || len(rep.LegitActedOn) > 0 {
		return 3
	}
	return 0
}
