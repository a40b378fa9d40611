namespace Org.M2mpsk.Tests {
  public static class OpensslTests {}
}
