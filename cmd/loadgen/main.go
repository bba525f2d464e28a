// Command loadgen plays a synthetic Asterisk 20 over AMI on loopback at a
// chosen event rate against the guard, run in a process of its own, then
// reports the rate achieved, what the guard did not see, blocked writes,
// attacks caught and missed, reaction times and the guard's CPU and peak
// memory. See internal/loadgen.
//
//	go run ./cmd/loadgen --rate 100000 --duration 10m
//	go run ./cmd/loadgen --rate 50000 --duration 5m --stress 2
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

func main() {
	if loadgen.IsGuardChild() {
		os.Exit(loadgen.GuardChild(os.Args[1:], os.Stderr))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o loadgen.Options
	fs.Float64Var(&o.Rate, "rate", 2000, "AMI events per second to send")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "how long to send")
	fs.IntVar(&o.Extensions, "extensions", 2000, "legitimate extensions (raised when needed so that none makes more than --max-cpm calls a minute)")
	fs.Float64Var(&o.MaxCallsPerMinute, "max-cpm", 6, "most calls a minute one legitimate extension makes")
	fs.IntVar(&o.Attacks, "attacks", 0, "attacks placed at random moments (burst, pjsip-hunt, brute-force, slow-hunt in turn); 0: one every 3 s of the run, at least 100; -1: none")
	fs.Int64Var(&o.Seed, "seed", 1, "seed of the random placement")
	fs.DurationVar(&o.SlowInterval, "slow-interval", 20*time.Second, "between the calls of a slow hunt (at most --duration/8)")
	fs.BoolVar(&o.AllEvents, "all-events", false, "send every event class (VarSet, Newexten, Cdr ...) whatever the guard's Events action asks")
	fs.IntVar(&o.QueueSize, "queue-size", 0, "the guard's ami.queue_size (0: the default, 65536)")
	fs.DurationVar(&o.Tick, "tick", time.Millisecond, "how often the generator writes (the events of one tick go out together)")
	fs.IntVar(&o.Nice, "nice", -10, "nice value of the generator's and AMI server's threads (the guard and stress-ng keep 0); 0 leaves them")
	fs.StringVar(&o.GuardBinary, "guard", "", "a guard binary to run as `GUARD run --config FILE` (default: this program in guard mode)")
	fs.StringVar(&o.GuardCPUProfile, "guard-cpuprofile", "", "write a CPU profile of the guard to this file")
	fs.StringVar(&o.GuardHeapProfile, "guard-heapprofile", "", "write a heap profile of the guard at the end of the run to this file")
	fs.IntVar(&o.Stress, "stress", 0, "run stress-ng --cpu N beside the guard during the run")
	fs.DurationVar(&o.ScrapeEvery, "scrape-every", time.Second, "how often to read the guard's metrics during the run")
	p99 := fs.Duration("goal-p99", -1, "reaction p99 goal (default 1ms, 50ms with --stress; 0: none)")
	cpu := fs.Float64("goal-cpu", -1, "guard CPU goal in cores (default 0.3, none with --stress; 0: none)")
	rss := fs.Float64("goal-rss", -1, "guard peak RSS goal in MiB (default 256, none with --stress; 0: none)")
	logFile := fs.String("guard-log", "", "write the guard's log (JSON lines) to this file (default: discarded)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	o.Goals = loadgen.DefaultGoals(o.Stress > 0)
	if *p99 >= 0 {
		o.Goals.ReactionP99 = *p99
	}
	if *cpu >= 0 {
		o.Goals.CPUCores = *cpu
	}
	if *rss >= 0 {
		o.Goals.PeakRSSMiB = *rss
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
