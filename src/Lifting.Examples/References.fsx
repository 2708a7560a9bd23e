// The Lifting assemblies for the scripts beside this file, from this project's build output:
//     dotnet build src/Lifting.Examples -c Release
// (`#r` paths are relative to this file.) The build has already made LibTorch loadable here
// (docs/engine.md). From packages instead: #i "nuget: FOLDER" and #r "nuget: Lifting.FSharp, 0.1.0".
#r "bin/Release/net10.0/TorchSharp.dll"
#r "bin/Release/net10.0/Lifting.Core.dll"
#r "bin/Release/net10.0/Lifting.FSharp.dll"
#r "bin/Release/net10.0/lifting.dll"
