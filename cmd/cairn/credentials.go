package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/control"
)

// cairn credentials create|list|validate|delete: the object stores
// cloudsnaps go to (pxctl credentials). Secrets go in, never come out.

func newCredentialsCommand(g *globals) *cobra.Command {
	c := newGroupCommand("credentials", "Create, list, validate and delete object store credentials (for cloudsnaps)")
	c.AddCommand(newCredentialsCreateCommand(g), newCredentialsListCommand(g), newCredentialsValidateCommand(g), newCredentialsDeleteCommand(g))
	return c
}

func newCredentialsCreateCommand(g *globals) *cobra.Command {
	var req control.CreateCredentialRequest
	cmd := &cobra.Command{
		Use:   "create NAME --provider s3 --s3-endpoint URL --s3-access-key K --s3-secret-key S [--s3-region R] [--bucket B] [--encryption-passphrase P]",
		Short: "Record the credentials of an S3 bucket (stored in the cluster's kvdb; secrets are never shown)",
		Example: `  cairn credentials create backups --provider s3 --s3-endpoint http://10.0.0.5:7070 \
      --s3-access-key AKIA... --s3-secret-key ... --bucket cairn --encryption-passphrase '...'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			info, err := g.client().CreateCredential(cmd.Context(), req)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), info)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Credentials created successfully: %s (bucket %s); check them with: cairn credentials validate %s\n", info.Name, info.Bucket, info.Name)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Provider, "provider", "s3", "object store provider (s3)")
	f.StringVar(&req.Endpoint, "s3-endpoint", "", "S3 endpoint: http://HOST:PORT or https://HOST[:PORT] (required)")
	f.StringVar(&req.AccessKey, "s3-access-key", "", "access key (required)")
	f.StringVar(&req.SecretKey, "s3-secret-key", "", "secret key (required)")
	f.StringVar(&req.Region, "s3-region", "", "region")
	f.StringVar(&req.Bucket, "bucket", "", "bucket (default cairn-cloudsnaps; must exist)")
	f.StringVar(&req.Passphrase, "encryption-passphrase", "", "encrypt cloudsnaps with a key derived from this passphrase (keep it: without it the backups cannot be restored)")
	addJSONFlag(cmd, g)
	return cmd
}

func newCredentialsListCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the credentials (secrets are never shown)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			creds, err := g.client().Credentials(cmd.Context())
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), creds)
			}
			printCredentials(cmd.OutOrStdout(), creds)
			return nil
		},
	}
	addJSONFlag(cmd, g)
	return cmd
}

func printCredentials(w io.Writer, creds []control.CredentialInfo) {
	if len(creds) == 0 {
		fmt.Fprintln(w, "No credentials found")
		return
	}
	t := newTable(w)
	fmt.Fprintln(t, "NAME\tPROVIDER\tENDPOINT\tACCESS KEY\tREGION\tBUCKET\tENCRYPTED")
	for _, c := range creds {
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Name, c.Provider, c.Endpoint, c.AccessKey, orDash(c.Region), c.Bucket, yesNo(c.Encrypted))
	}
	t.Flush()
}

func newCredentialsValidateCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "validate NAME",
		Short: "Reach the store with a credential: the bucket must exist and take writes",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			info, err := g.client().ValidateCredential(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), info)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Credential validated successfully: %s (bucket %s at %s)\n", info.Name, info.Bucket, info.Endpoint)
			return nil
		},
	}
	addJSONFlag(cmd, g)
	return cmd
}

func newCredentialsDeleteCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Forget a credential (the backups in its bucket stay)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.client().DeleteCredential(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Credential deleted successfully: %s\n", args[0])
			return nil
		},
	}
}
