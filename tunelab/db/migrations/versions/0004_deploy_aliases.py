"""Deploy semantics: traffic split per deployment, model version aliases, the deploy decision

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing deployments answered all of their endpoint's requests (the newest one did):
    # each keeps 100 until the next deploy or undeploy on its endpoint splits the traffic again.
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(
            sa.Column("traffic_percentage", sa.Integer(), nullable=False, server_default="100")
        )
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("deploy_note", sa.Text(), nullable=True))
    op.create_table(
        "model_aliases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("model_version_id", sa.String(length=40), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["model_name"], ["tuned_models.name"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model_name", "alias"),
    )
    op.create_index("ix_model_aliases_model_version_id", "model_aliases", ["model_version_id"])


def downgrade() -> None:
    op.drop_index("ix_model_aliases_model_version_id", table_name="model_aliases")
    op.drop_table("model_aliases")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("deploy_note")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("traffic_percentage")
