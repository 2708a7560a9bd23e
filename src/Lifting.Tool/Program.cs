// The `lifting` .NET tool: the host's commands (src/Lifting.Host/Cli.cs).
return Lifting.Host.Cli.Run(args, Console.Out, Console.Error);
