module Lifting.Tests.Support
