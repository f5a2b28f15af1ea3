package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/cloudsnap"
	"github.com/cairn-storage/cairn/control"
)

// cairn cloudsnap backup|status|list|delete|restore, after pxctl's.

func newCloudsnapCommand(g *globals) *cobra.Command {
	c := newGroupCommand("cloudsnap", "Back volumes up to an S3 bucket, list, delete and restore the backups")
	c.AddCommand(newCloudsnapBackupCommand(g), newCloudsnapStatusCommand(g), newCloudsnapListCommand(g),
		newCloudsnapDeleteCommand(g), newCloudsnapRestoreCommand(g))
	return c
}

func newCloudsnapBackupCommand(g *globals) *cobra.Command {
	var req control.CloudsnapBackupRequest
	var wait bool
	cmd := &cobra.Command{
		Use:   "backup VOLUME [--cred NAME] [--full] [--wait]",
		Short: "Back a volume up to the bucket: a local snapshot, uploaded incrementally (every 7th backup full)",
		Example: `  cairn cloudsnap backup db --wait
  cairn cloudsnap backup db --cred backups --full`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Volume = args[0]
			c := g.client()
			job, err := c.BackupCloudsnap(cmd.Context(), req)
			if err != nil {
				return err
			}
			if !wait {
				if g.json {
					return printJSON(cmd.OutOrStdout(), job)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Cloudsnap backup started: %s (follow it with: cairn cloudsnap status %s)\n", job.Cloudsnap, job.Volume)
				return nil
			}
			progress := cmd.OutOrStdout()
			if g.json {
				progress = io.Discard // stdout is the JSON alone
			}
			job, err = waitJob(cmd.Context(), c, job, progress)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), job)
			}
			kind := "incremental"
			if job.Full {
				kind = "full"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Cloudsnap backup done: %s (%s, %s uploaded)\n", job.Cloudsnap, kind, formatSize(job.BytesUploaded))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Credential, "cred", "", "credential (default: the only one)")
	f.BoolVar(&req.Full, "full", false, "upload everything, starting a new chain")
	f.BoolVar(&wait, "wait", false, "wait for the upload, showing its progress")
	addJSONFlag(cmd, g)
	return cmd
}

func newCloudsnapRestoreCommand(g *globals) *cobra.Command {
	var req control.CloudsnapRestoreRequest
	var id string
	var wait bool
	cmd := &cobra.Command{
		Use:   "restore --snap ID [--name NEW] [--cred NAME] [--wait]",
		Short: "Make a new volume (repl 1) with exactly a backup's content",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if id == "" {
				return errors.New("cloudsnap restore: --snap ID is required (cairn cloudsnap list shows them)")
			}
			c := g.client()
			job, err := c.RestoreCloudsnap(cmd.Context(), id, req)
			if err != nil {
				return err
			}
			if !wait {
				if g.json {
					return printJSON(cmd.OutOrStdout(), job)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Cloudsnap restore started: volume %s from %s (follow it with: cairn cloudsnap status %s)\n", job.Volume, id, job.Volume)
				return nil
			}
			progress := cmd.OutOrStdout()
			if g.json {
				progress = io.Discard // stdout is the JSON alone
			}
			job, err = waitJob(cmd.Context(), c, job, progress)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), job)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Cloudsnap restore done: volume %s from %s\n", job.Volume, id)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&id, "snap", "", "the cloudsnap to restore (required)")
	f.StringVar(&req.Name, "name", "", "name of the new volume (default: the backed-up volume's name)")
	f.StringVar(&req.Credential, "cred", "", "credential (default: the only one)")
	f.BoolVar(&wait, "wait", false, "wait for the restore, showing its progress")
	addJSONFlag(cmd, g)
	return cmd
}

// waitJob follows a job until it ends: a progress bar on a terminal, a
// plain line every few seconds otherwise. A failed job is an error.
func waitJob(ctx context.Context, c *control.Client, job control.CloudsnapJob, w io.Writer) (control.CloudsnapJob, error) {
	p := newProgress(w)
	for {
		jobs, err := c.CloudsnapJobs(ctx, job.Volume)
		if err != nil {
			return job, err
		}
		found := false
		for _, j := range jobs {
			if j.ID == job.ID && j.Started >= job.Started {
				job, found = j, true
			}
		}
		if !found {
			return job, fmt.Errorf("cloudsnap %s %s: the daemon no longer knows the job (restarted?); see cairn cloudsnap status", job.Kind, job.Cloudsnap)
		}
		pct, line := progressLine(job)
		p.show(pct, line, job.State != "running")
		if job.State != "running" {
			p.end()
			if job.State == "failed" {
				return job, fmt.Errorf("cloudsnap %s %s failed: %s", job.Kind, job.Cloudsnap, job.Error)
			}
			return job, nil
		}
		select {
		case <-ctx.Done():
			return job, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// progressLine is how far job j has come, in percent and in words.
func progressLine(j control.CloudsnapJob) (float64, string) {
	pct := 0.0
	if j.BytesTotal > 0 {
		pct = 100 * float64(j.BytesDone) / float64(j.BytesTotal)
	}
	if j.State == "done" {
		pct = 100
	}
	eta := "-"
	if j.State == "running" && j.RateBytesPerSec > 0 {
		eta = (time.Duration(j.ETASeconds) * time.Second).String()
	}
	s := fmt.Sprintf("%s %s: %5.1f%%  %s of %s  %s/s  ETA %s", j.Kind, j.Volume, pct, formatSize(j.BytesDone), formatSize(j.BytesTotal),
		formatSize(int64(j.RateBytesPerSec)), eta)
	return pct, s
}

func newCloudsnapStatusCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status [VOLUME]",
		Short: "Running and recent backups and restores: bytes done of total, rate, ETA",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			vol := ""
			if len(args) == 1 {
				vol = args[0]
			}
			jobs, err := g.client().CloudsnapJobs(cmd.Context(), vol)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), jobs)
			}
			w := cmd.OutOrStdout()
			if len(jobs) == 0 {
				fmt.Fprintln(w, "No cloudsnap backups or restores")
				return nil
			}
			t := newTable(w)
			fmt.Fprintln(t, "CLOUDSNAP\tKIND\tVOLUME\tSTATE\tDONE\tTOTAL\tRATE\tETA\tSTARTED\tERROR")
			for _, j := range jobs {
				eta := "-"
				if j.State == "running" && j.RateBytesPerSec > 0 {
					eta = (time.Duration(j.ETASeconds) * time.Second).String()
				}
				fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\t%s/s\t%s\t%s\t%s\n", j.Cloudsnap, j.Kind, j.Volume, j.State, formatSize(j.BytesDone),
					formatSize(j.BytesTotal), formatSize(int64(j.RateBytesPerSec)), eta, j.Started, orDash(j.Error))
			}
			t.Flush()
			return nil
		},
	}
	addJSONFlag(cmd, g)
	return cmd
}

func newCloudsnapListCommand(g *globals) *cobra.Command {
	var cred, volume string
	cmd := &cobra.Command{
		Use:     "list [--volume VOL] [--cred NAME]",
		Aliases: []string{"ls"},
		Short:   "List the backups in the bucket (read from the bucket: any node sees the same)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			list, err := g.client().Cloudsnaps(cmd.Context(), cred, volume)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), list)
			}
			printCloudsnaps(cmd.OutOrStdout(), list)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&volume, "volume", "", "only the backups of this volume (name or id)")
	f.StringVar(&cred, "cred", "", "credential (default: the only one)")
	addJSONFlag(cmd, g)
	return cmd
}

func printCloudsnaps(w io.Writer, list []cloudsnap.Entry) {
	if len(list) == 0 {
		fmt.Fprintln(w, "No cloudsnaps found")
		return
	}
	t := newTable(w)
	fmt.Fprintln(t, "ID\tVOLUME\tCREATED\tTYPE\tSIZE\tDATA\tUPLOADED\tENCRYPTED")
	for _, e := range list {
		if e.Error != "" {
			fmt.Fprintf(t, "%s\t-\t-\tdamaged\t-\t-\t-\t-\t(%s)\n", e.ID, e.Error)
			continue
		}
		kind := "incremental"
		if e.Full {
			kind = "full"
		}
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.ID, e.Volume, e.Created.UTC().Format(time.RFC3339), kind,
			formatSize(e.Size), formatSize(e.Data), formatSize(e.Uploaded), yesNo(e.Encrypted))
	}
	t.Flush()
}

func newCloudsnapDeleteCommand(g *globals) *cobra.Command {
	var id, cred string
	cmd := &cobra.Command{
		Use:   "delete --snap ID [--cred NAME]",
		Short: "Delete a backup from the bucket; every other backup of its chain stays restorable",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if id == "" {
				return errors.New("cloudsnap delete: --snap ID is required (cairn cloudsnap list shows them)")
			}
			if err := g.client().DeleteCloudsnap(cmd.Context(), cred, id); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Cloudsnap deleted successfully: %s\n", id)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&id, "snap", "", "the cloudsnap to delete (required)")
	f.StringVar(&cred, "cred", "", "credential (default: the only one)")
	return cmd
}

// cloudsnapScheduleFlags are --cloudsnap_interval and --cloudsnap_keep on
// volume create and update.
type cloudsnapScheduleFlags struct {
	cmd            *cobra.Command
	interval, keep int
}

func (s *cloudsnapScheduleFlags) add(cmd *cobra.Command) {
	s.cmd = cmd
	cmd.Flags().IntVar(&s.interval, "cloudsnap_interval", 0, "back up to the bucket every MIN minutes (0 = off)")
	cmd.Flags().IntVar(&s.keep, "cloudsnap_keep", control.DefaultCloudsnapKeep, "scheduled cloudsnaps to keep (the oldest are deleted from the bucket)")
}

// create returns the values for CreateVolumeRequest (0 = not given).
func (s *cloudsnapScheduleFlags) create() (interval, keep int) {
	if s.cmd.Flags().Changed("cloudsnap_keep") {
		keep = s.keep
	}
	return s.interval, keep
}

// update returns the values for UpdateVolumeRequest (nil = not given).
func (s *cloudsnapScheduleFlags) update() (interval, keep *int) {
	if s.cmd.Flags().Changed("cloudsnap_interval") {
		interval = &s.interval
	}
	if s.cmd.Flags().Changed("cloudsnap_keep") {
		keep = &s.keep
	}
	return interval, keep
}

func cloudsnapSchedule(v control.Volume) string {
	switch {
	case v.Snapshot:
		return "-"
	case v.CloudsnapInterval > 0:
		return fmt.Sprintf("every %d min, keep %d", v.CloudsnapInterval, v.CloudsnapKeep)
	}
	return "off"
}
