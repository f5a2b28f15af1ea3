package main

import "github.com/cairn-storage/cairn/internal/size"

// parseSize and formatSize are the CLI's names for internal/size, where the
// parser lives so that fuzz/ can reach it.
func parseSize(s string) (int64, error) { return size.Parse(s) }

func formatSize(n int64) string { return size.Format(n) }
