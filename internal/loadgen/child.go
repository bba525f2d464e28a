package loadgen

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/guard"
)

// childEnv, set to "1" in a process's environment, makes a program built
// with this package run as the guard under test (GuardChild) instead of
// doing its own work: Run starts the guard by running its own executable
// again with it, unless Options.GuardBinary names a guard binary.
const childEnv = "ASTGUARD_LOADGEN_GUARD"

// IsGuardChild reports whether Run started this process as the guard under
// test. A program that calls Run without Options.GuardBinary must check it
// first thing in main (and a test package in TestMain) and then call
// GuardChild.
func IsGuardChild() bool { return os.Getenv(childEnv) == "1" }

// GuardChild runs the guard as `guard run --config FILE` does (JSON log to
// stderr, stop on SIGINT or SIGTERM) and returns the exit status. With
// --cpuprofile it profiles the guard's CPU; with --heapprofile it writes a
// heap profile when told to stop, after a garbage collection and before
// the guard lets go of its state: what the guard holds at the end of the run.
func GuardChild(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("loadgen-guard", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (TOML)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the guard here")
	heapProfile := fs.String("heapprofile", "", "write a heap profile of the guard here when it is stopped")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintf(stderr, "config is invalid:\n%v\n", err)
		return 1
	}
	lvl, err := zerolog.ParseLevel(cfg.Log.Level)
	if err != nil || cfg.Log.Level == "" {
		lvl = zerolog.InfoLevel
	}
	zerolog.TimeFieldFormat = time.RFC3339Nano
	log := zerolog.New(zerolog.SyncWriter(stderr)).Level(lvl).With().Timestamp().Logger()

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			log.Error().Err(err).Msg("cannot write the CPU profile")
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Error().Err(err).Msg("cannot start the CPU profile")
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	sig, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-sig.Done()
		if *heapProfile != "" {
			if err := writeHeapProfile(*heapProfile); err != nil {
				log.Error().Err(err).Msg("cannot write the heap profile")
			}
		}
		cancel()
	}()
	err = guard.Run(ctx, guard.Options{
		Config: cfg,
		Load:   func() (*config.Config, error) { return config.Load(*path) },
		Logger: log,
	})
	if err != nil {
		log.Error().Err(err).Msg("guard failed")
		return 1
	}
	return 0
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
