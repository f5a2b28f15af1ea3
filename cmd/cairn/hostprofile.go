package main

import (
	"fmt"
	"os"
	"runtime/pprof"
)

// startCPUProfile profiles the daemon until the returned stop is called
// (at shutdown): `cairn daemon --cpu-profile FILE`, for benchmarks.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
